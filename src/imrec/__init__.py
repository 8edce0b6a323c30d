"""imrec: from images to a deployed recogniser.

Usage (training MNIST takes about a minute on 2 CPU cores, digits-detect about 8)::

    import imrec

    report = imrec.fit("mnist", out="runs/mnist")
    imrec.Predictor("runs/mnist").predict(["digit.jpg"])
    report = imrec.fit("digits-detect", out="runs/dd")
    imrec.DetectionPredictor("runs/dd").predict(["scene.png"])
    imrec.load("runs/mnist/bundle").predict("digit.jpg")  # after `imrec export runs/mnist`
"""

from imrec.api import (  # noqa: E402
    calibrate,
    doctor,
    evaluate,
    fit,
    load_predictor,
    resume,
    train_config,
)
from imrec.classify.predict import Predictor
from imrec.config import (  # noqa: E402
    DataConfig,
    HardwareConfig,
    LoopConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    build_config,
)
from imrec.core.version import __version__  # noqa: E402, F401
from imrec.data import list_datasets, load_dataset  # noqa: E402
from imrec.data.detection import load_detection  # noqa: E402
from imrec.deploy.runtime import Model, load
from imrec.models import create_model, list_models  # noqa: E402
from imrec.models.detectors import create_detector, list_detectors  # noqa: E402
from imrec.models.load import load_model


def __getattr__(name: str):
    # The detection package imports torchvision (about 2 s); it loads on first use only.
    if name == "DetectionPredictor":
        from imrec.detect.predict import DetectionPredictor

        return DetectionPredictor
    raise AttributeError(f"module 'imrec' has no attribute {name!r}")


__all__ = [
    "DataConfig",
    "HardwareConfig",
    "LoopConfig",
    "DetectionPredictor",
    "Model",
    "ModelConfig",
    "OptimConfig",
    "Predictor",
    "RunConfig",
    "TrainConfig",
    "build_config",
    "create_detector",
    "create_model",
    "calibrate",
    "doctor",
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
