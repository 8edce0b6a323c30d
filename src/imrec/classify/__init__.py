"""Image classification: what the classification task provides to :mod:`imrec.api`.

Every task package exposes the same few names, so that :mod:`imrec.api` (the one place that
dispatches on the task) treats them alike and a new task is one new sibling package:

- ``TASK``: the task's name, as datasets, models and checkpoints declare it;
- ``Trainer``: the :class:`imrec.engine.loop.Trainer` subclass with the task's hooks;
- ``load_data(name, **options)``: the dataset, split into train, validation and test;
- ``train_run(run, run_dir, *, progress, data)``: a new run, returning its report (not
  ``train``, which would hide the ``train`` module);
- ``evaluate_run(run_dir, data, *, batch_size, device)``: a run's best checkpoint, scored;
- ``Predictor``: predictions on real-world image files;
- ``get_data(name)``: fetch and verify the dataset's files; a line saying where they are;
- ``save_samples(name, out, ...)``: a PNG of samples (``imrec data show``);
- ``export``: what the bundle, the parity gate and the runtime need (see ``export.py``);
- ``summary(report)``: the headline numbers of a report, in one line;
- ``UNUSED_TRAIN_FIELDS``: :class:`~imrec.config.TrainConfig` fields the task does not
  honour; :func:`imrec.api.fit` refuses them when a user sets them.
"""

from imrec.classify import export
from imrec.classify.evaluate import evaluate_run
from imrec.classify.predict import Predictor
from imrec.classify.report import calibrated_ece
from imrec.classify.samples import save_samples
from imrec.classify.train import ClassifyTrainer as Trainer
from imrec.classify.train import load_for_training
from imrec.classify.train import train as train_run
from imrec.data import dataset_info, fetch_dataset

TASK = "classify"
UNUSED_TRAIN_FIELDS: tuple[str, ...] = ()


def summary(report: dict) -> str:
    """The headline numbers of a classification report's test split; the calibration error is
    that of the calibrated probabilities (what predictions give) when the run was calibrated.

    Example:
        >>> summary({"test": {"accuracy": 0.99, "macro_f1": 0.98, "top5": 1.0, "ece": 0.01}})
        'accuracy 0.9900, macro F1 0.9800, top-5 1.0000, ECE 0.0100'
        >>> t = {"accuracy": 0.97, "macro_f1": 0.97, "top5": 1.0, "ece": 0.12}
        >>> summary({"test": t, "confidence": {"test": {"ece_after": 0.02}}})
        'accuracy 0.9700, macro F1 0.9700, top-5 1.0000, ECE 0.0200 (calibrated; 0.1200 raw)'
    """
    t = report["test"]
    after = calibrated_ece(report, "test")
    ece = (
        f"ECE {t['ece']:.4f}"
        if after is None
        else f"ECE {after:.4f} (calibrated; {t['ece']:.4f} raw)"
    )
    return (
        f"accuracy {t['accuracy']:.4f}, macro F1 {t['macro_f1']:.4f}, top-5 {t['top5']:.4f}, {ece}"
    )


def get_data(name: str) -> str:
    """Fetch and verify the files of ``name``; say where they are.

    Example:
        >>> get_data("digits").startswith("digits: files verified in ")
        True
    """
    info = dataset_info(name)
    return f"{info.name}: files verified in {fetch_dataset(name)}"


def load_data(name: str, *, placement: str = "auto", **options):
    """The classification dataset ``name`` (see :func:`imrec.data.load_dataset`)."""
    return load_for_training(name, placement, **options)


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
