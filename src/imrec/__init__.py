"""imrec: from images to a deployed recogniser.

Example:
    >>> import imrec
    >>> report = imrec.fit("mnist", out="runs/mnist")  # doctest: +SKIP
    >>> imrec.Predictor("runs/mnist").predict(["digit.jpg"])  # doctest: +SKIP
"""

__version__ = "0.1.0"

from imrec.api import fit, resume, train_config  # noqa: E402
from imrec.config import DataConfig, ModelConfig, RunConfig, TrainConfig, build_config  # noqa: E402
from imrec.data import list_datasets, load_dataset  # noqa: E402
from imrec.engine.evaluate import evaluate_run as evaluate  # noqa: E402
from imrec.inference import Predictor, load_model  # noqa: E402
from imrec.models import create_model, list_models  # noqa: E402

__all__ = [
    "DataConfig",
    "ModelConfig",
    "Predictor",
    "RunConfig",
    "TrainConfig",
    "build_config",
    "create_model",
    "evaluate",
    "fit",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_model",
    "resume",
    "train_config",
]
