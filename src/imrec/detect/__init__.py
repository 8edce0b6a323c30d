"""Object detection: what the detection task provides to :mod:`imrec.api`.

The same names as :mod:`imrec.classify` (see there): ``TASK``, ``Trainer``, ``load_data``,
``train_run``, ``evaluate_run``, ``Predictor``, ``get_data``, ``save_samples``, ``summary``, ``export`` and
``UNUSED_TRAIN_FIELDS``.
"""

from imrec.data.detection import fetch_detection, load_detection
from imrec.detect import export
from imrec.detect.evaluate import evaluate_detection_run
from imrec.detect.predict import DetectionPredictor as Predictor
from imrec.detect.samples import save_samples
from imrec.detect.train import DetectionTrainer as Trainer
from imrec.detect.train import train_detector as train_run

TASK = "detect"
# What the detection trainer does not use: the loss is the detector's own (no smoothing or
# class weights, keeping a checkpoint's classes), scenes are read through a dataset of boxes (no data placement or streaming
# workers), steps are neither compiled nor recorded as CUDA graphs, and scenes keep their size.
UNUSED_TRAIN_FIELDS = (
    "label_smoothing",
    "class_weights",
    "compile",
    "data_placement",
    "workers",
    "worker_priority",
    "cuda_graphs",
    "eval_batch_size",
    "small_epochs",
    "small_scale",
    "keep_classes",
    "rehearse",
    "distill",
    "distill_temperature",
    "outliers",
    "outlier_weight",
)


def summary(report: dict) -> str:
    """The headline numbers of a detection report's test split.

    Example:
        >>> summary({"test": {"map": 0.8, "map50": 0.97, "map75": 0.9}})
        'mAP@[.5:.95] 0.8000, mAP@.5 0.9700, mAP@.75 0.9000'
    """
    t = report["test"]
    return f"mAP@[.5:.95] {t['map']:.4f}, mAP@.5 {t['map50']:.4f}, mAP@.75 {t['map75']:.4f}"


def get_data(name: str) -> str:
    """Make the files of ``name`` available (generated, copied or found); say where they are."""
    return f"{name}: files ready in {fetch_detection(name)}"


def load_data(name: str, *, placement: str = "auto", size=None, domain=None, **options):
    """The detection dataset ``name`` (see :func:`imrec.data.detection.load_detection`).

    Images are letterboxed to the run's size by the trainer, not when loading, and the data
    placement of classification does not apply: ``size``, ``domain`` and ``placement`` are
    accepted for the common interface and not used here.
    """
    return load_detection(name, **options)


def evaluate_run(
    run_dir, data=None, *, batch_size: int = 1024, device: str = "cpu", split: str = "test"
) -> dict:
    """A detection run's best checkpoint scored with COCO mAP (``batch_size`` is not used)."""
    if split != "test":
        raise ValueError("detectors are scored on a test split; --split all is for classifiers")
    return evaluate_detection_run(run_dir, data, device=device)


__all__ = [
    "export",
    "TASK",
    "UNUSED_TRAIN_FIELDS",
    "Predictor",
    "Trainer",
    "evaluate_run",
    "get_data",
    "load_data",
    "save_samples",
    "summary",
    "train_run",
]
