"""imrec: from images to a deployed recogniser.

Usage (training MNIST takes about a minute on 2 CPU cores, digits-detect about 8)::

    import imrec

    report = imrec.fit("mnist", out="runs/mnist")
    imrec.Predictor("runs/mnist").predict(["digit.jpg"])
    report = imrec.fit("digits-detect", out="runs/dd")
    imrec.DetectionPredictor("runs/dd").predict(["scene.png"])
    imrec.load("runs/mnist/bundle").predict("digit.jpg")  # after `imrec export runs/mnist`
"""

from typing import TYPE_CHECKING

from imrec.core.version import __version__  # noqa: F401

# Where each public name lives. They load on first use (PEP 562), so that `import imrec` and the
# command line's start cost nothing until a command needs torch (and the command line can pause
# the garbage collector before torch loads: imrec.core.heap).
_WHERE = {
    "calibrate": "imrec.api",
    "doctor": "imrec.api",
    "evaluate": "imrec.api",
    "fit": "imrec.api",
    "load_predictor": "imrec.api",
    "resume": "imrec.api",
    "train_config": "imrec.api",
    "Predictor": "imrec.classify.predict",
    "DataConfig": "imrec.config",
    "HardwareConfig": "imrec.config",
    "LoopConfig": "imrec.config",
    "ModelConfig": "imrec.config",
    "OptimConfig": "imrec.config",
    "RunConfig": "imrec.config",
    "TrainConfig": "imrec.config",
    "build_config": "imrec.config",
    "list_datasets": "imrec.data",
    "load_dataset": "imrec.data",
    "load_detection": "imrec.data.detection",
    "DetectionPredictor": "imrec.detect.predict",
    "Model": "imrec.deploy.runtime",
    "load": "imrec.deploy.runtime",
    "create_model": "imrec.models",
    "list_models": "imrec.models",
    "create_detector": "imrec.models.detectors",
    "list_detectors": "imrec.models.detectors",
    "load_model": "imrec.models.load",
}

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from imrec.api import calibrate, doctor, evaluate, fit, load_predictor, resume, train_config
    from imrec.classify.predict import Predictor
    from imrec.config import (
        DataConfig,
        HardwareConfig,
        LoopConfig,
        ModelConfig,
        OptimConfig,
        RunConfig,
        TrainConfig,
        build_config,
    )
    from imrec.data import list_datasets, load_dataset
    from imrec.data.detection import load_detection
    from imrec.deploy.runtime import Model, load
    from imrec.detect.predict import DetectionPredictor
    from imrec.models import create_model, list_models
    from imrec.models.detectors import create_detector, list_detectors
    from imrec.models.load import load_model


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'imrec' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
