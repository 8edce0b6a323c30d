"""imrec: from images to a deployed recogniser.

Example:
    >>> import imrec
    >>> report = imrec.fit("mnist", out="runs/mnist")  # doctest: +SKIP
    >>> imrec.Predictor("runs/mnist").predict(["digit.jpg"])  # doctest: +SKIP
    >>> report = imrec.fit("digits-detect", out="runs/dd")  # doctest: +SKIP
    >>> imrec.DetectionPredictor("runs/dd").predict(["scene.png"])  # doctest: +SKIP
    >>> imrec.load("runs/mnist/bundle").predict("digit.jpg")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from imrec.api import fit, resume, train_config  # noqa: E402
from imrec.config import DataConfig, ModelConfig, RunConfig, TrainConfig, build_config  # noqa: E402
from imrec.data import list_datasets, load_dataset  # noqa: E402
from imrec.data.detection import load_detection  # noqa: E402
from imrec.engine.evaluate import evaluate_run as evaluate  # noqa: E402
from imrec.inference import DetectionPredictor, Predictor, load_model, load_predictor  # noqa: E402
from imrec.models import create_model, list_models  # noqa: E402
from imrec.models.detectors import create_detector, list_detectors  # noqa: E402
from imrec.runtime import Model, load  # noqa: E402

__all__ = [
    "DataConfig",
    "DetectionPredictor",
    "Model",
    "ModelConfig",
    "Predictor",
    "RunConfig",
    "TrainConfig",
    "build_config",
    "create_detector",
    "create_model",
    "evaluate",
    "fit",
    "list_datasets",
    "list_detectors",
    "list_models",
    "load",
    "load_dataset",
    "load_detection",
    "load_model",
    "load_predictor",
    "resume",
    "train_config",
]
