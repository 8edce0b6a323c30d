"""The few calls a user needs, in Python: the CLI is a thin layer over these.

Datasets and checkpoints declare their task (``"classify"`` or ``"detect"``); the calls here
reach the task's package (its trainer, data loading, evaluation, predictor, summary) through
:func:`imrec.tasks.task_package`, the one table of tasks, which export and the runtime use
too. Task packages are imported on first use, so a classification run never loads the
detection code (nor torchvision).

Example:
    >>> task_package("classify").TASK
    'classify'
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from imrec.classify.finetune import kept_size
from imrec.config import (
    TRAIN_GROUPS,
    OptimConfig,
    RunConfig,
    TrainConfig,
    build_config,
    folder_recipe,
    split_train,
)
from imrec.core import timing
from imrec.core.checkpoint import CheckpointError, read_checkpoint_meta
from imrec.core.checks import AT_LEAST_1, check_number
from imrec.core.errors import TrainError
from imrec.data.registry import dataset_task
from imrec.engine.loop import default_run_dir, resumable_config
from imrec.models.registry import architecture_options, model_task
from imrec.tasks import TASKS, task_package  # noqa: F401  (part of the API)


def fit(
    dataset: str,
    *,
    preset: str = "fast",
    out: str | Path | None = None,
    data: dict | None = None,
    model: dict | None = None,
    train: dict | None = None,
    progress: bool = True,
    task: str | None = None,
) -> dict:
    """Train a classifier or a detector on ``dataset`` with the preset's recipe and your overrides.

    ``task`` is ``"classify"`` or ``"detect"``; by default the dataset's own. ``train`` takes
    any training option by its flat name (see :class:`~imrec.config.TrainConfig`). Returns the report
    (also written to ``<out>/report.json`` and ``report.md``), with the run folder under
    ``report["run_dir"]``.

    Example (``digits`` comes with scikit-learn: nothing to download, seconds to train):
        >>> import imrec
        >>> report = imrec.fit("digits", out=tmp / "digits", progress=False)
        >>> report["test"]["accuracy"] > 0.9, report["run_dir"] == str(tmp / "digits")
        (True, True)

    A detector trains the same way: ``imrec.fit("digits-detect", out="runs/dd")`` (about 8
    minutes on 2 CPU cores) reports its mAP@.5 under ``report["test"]["map50"]``.
    """
    with timing.run_clock():  # report.json "timing.phases": where the seconds went
        return _fit(dataset, preset, out, data, model, train, progress, task)


def _fit(dataset, preset, out, data, model, train, progress, task) -> dict:
    task = task or dataset_task(dataset)
    pkg = task_package(task)
    data, train = dict(data or {}), dict(train or {})
    if task != "classify" and (data.get("exclude") or data.get("relabel")):
        raise TrainError("--exclude and --relabel apply to classification data only")
    check_train_fields(pkg, train)
    if (model or {}).get("name") and model_task(model["name"]) != task:
        raise TrainError(
            f"{model['name']} is a {model_task(model['name'])} model and {dataset} a {task} "
            f"dataset; see `imrec models --task {task}`"
        )
    size = data.get("size")
    if size is None and task == "classify":  # fine-tuning that keeps classes: the model's size
        size = kept_size(OptimConfig(**split_train(train)["optim"]))
    with timing.phase("data_load"):
        loaded = pkg.load_data(
            dataset,
            placement=train.get("data_placement", "auto"),
            val_fraction=data.get("val_fraction", 0.1),
            seed=train.get("seed", 0),
            size=size,
            channels=data.get("channels"),
            domain=data.get("domain"),
        )
    data.setdefault("domain", loaded.domain)
    model = dict(model or {})
    if train.get("init") and "name" not in model and task == "classify":
        model = {**_model_of(train["init"]), **model}  # fine-tune the checkpoint's own network
    notes: tuple[str, ...] = ()
    if dataset.startswith("folder:") and "epochs" not in train:
        scaled, why = folder_recipe(
            len(loaded.train), loaded.domain, preset, train.get("batch_size")
        )
        train, notes = {**scaled, **train}, (why,)
    run = build_config(
        dataset, loaded.domain, preset, data=data, model=model, train=train, task=task, notes=notes
    )
    base = dataset if task == "classify" else dataset.split(":", 1)[0]
    run_dir = Path(out) if out else default_run_dir(base)
    report = pkg.train_run(run, run_dir, progress=progress, data=loaded)
    report["run_dir"] = str(run_dir)
    return report


def check_train_fields(pkg: ModuleType, train: dict) -> None:
    """Refuse unknown training options, and settings the task would silently ignore (a value
    other than the default).

    Example:
        >>> check_train_fields(task_package("classify"), {"label_smoothing": 0.1})
    """
    for group, options in split_train(train).items():  # names every unknown option
        TRAIN_GROUPS[group](**options)  # refuses a value outside its range before data load
    defaults = TrainConfig()
    unused = [k for k in pkg.UNUSED_TRAIN_FIELDS if k in train and train[k] != getattr(defaults, k)]
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise TrainError(f"{flags}: not used when training a {pkg.TASK} model; leave it out")


def _model_of(checkpoint: str | Path) -> dict:
    try:
        meta = read_checkpoint_meta(checkpoint)
    except CheckpointError as e:
        raise TrainError(f"--init: {e}") from e
    m = meta["model"]
    return {
        "name": m["name"],
        "options": architecture_options(m.get("options", {})),
        "weight_norm": m.get("weight_norm", False),
        "members": m.get("members", 1),
    }


def resume(run_dir: str | Path, *, progress: bool = True) -> dict:
    """Continue a run that was stopped or killed, from its last complete epoch."""
    run = resumable_config(run_dir)
    trainer = task_package(run.task).Trainer(run, run_dir, progress=progress)
    trainer.load_state()
    report = trainer.fit()
    report["run_dir"] = str(run_dir)
    return report


def train_config(run: RunConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Train from a fully resolved :class:`RunConfig` (e.g. one read from a ``config.json``)."""
    report = task_package(run.task).train_run(run, out, progress=progress)
    report["run_dir"] = str(out)
    return report


def evaluate(
    run_dir: str | Path,
    data: str | None = None,
    *,
    batch_size: int = 1024,
    device: str = "cpu",
    split: str = "test",
    ood: str | list[str] | None = None,
    ood_limit: int | None = None,
) -> dict:
    """Evaluate a run's best checkpoint on its dataset's test split, or on another dataset.

    Classifiers are scored with accuracy, F1, calibration and the rest; detectors with COCO
    mAP. With ``data`` naming another dataset (e.g. ``folder:my_digits``), its test split is
    matched to the model's classes by name (it may have fewer) and the results go to
    ``run_dir/eval-<name>/``; ``split="all"`` scores all of its images (classifiers).

    ``ood`` (classifiers): out-of-distribution sets, ``"fashion-mnist,chars74k"`` or a list;
    datasets, or generated ``noise``, ``blank``, ``scribbles``. The report's ``ood`` section
    gives per set the AUROC, the share accepted at 95% of the model's own images (FPR at 95%
    TPR) and the share rejected at the stored threshold, with ``ood.png``
    (:mod:`imrec.classify.ood`); ``ood_limit`` caps each dataset (default 10,000 images).

    Example (the report is written into the run folder, so here into a copy of ``run``):
        >>> import shutil
        >>> report = evaluate(shutil.copytree(run, tmp / "run"))
        >>> report["test"]["accuracy"] > 0.9, sorted(report["test"])[:3]
        (True, ['accuracy', 'confusion', 'ece'])
    """
    check_number(batch_size, "batch_size (--batch-size)", AT_LEAST_1, whole=True)
    if ood_limit is not None:
        check_number(ood_limit, "ood_limit (--ood-limit)", AT_LEAST_1, whole=True)
    task = read_checkpoint_meta(run_dir).get("task", "classify")
    pkg = task_package(task)
    options = {}
    if ood is not None:
        if task != "classify":
            raise ValueError("--ood: classifiers only (detectors keep their score threshold)")
        options = {"ood": ood, "ood_limit": ood_limit}
    if split != "test":
        options["split"] = split
    return pkg.evaluate_run(run_dir, data, batch_size=batch_size, device=device, **options)


def calibrate(
    run_dir: str | Path,
    data: str | None = None,
    *,
    accept_rate: float = 0.99,
    split: str | None = None,
    device: str = "cpu",
    score: str | None = None,
) -> dict:
    """Refit a classifier run's temperature and "unknown" threshold: on its validation split
    for another ``accept_rate`` (the share of in-distribution images accepted, in (0, 1]), or
    on another dataset whose classes the model knows (``folder:PATH`` of your own real images).
    ``score``: ``msp``, ``energy``, ``mahalanobis`` or ``energy+maha`` (default: energy+maha
    up to 100 classes, msp above; see :mod:`imrec.classify.confidence`).
    Returns the new ``confidence`` section (also in ``run_dir/calibration.json``)."""
    from imrec.classify.confidence import check_accept_rate, check_score
    from imrec.classify.evaluate import calibrate_run

    if read_checkpoint_meta(run_dir).get("task", "classify") != "classify":
        raise ValueError("calibrate: classifiers only (detectors keep their score threshold)")
    check_accept_rate(accept_rate)
    if score is not None:
        check_score(score)
    return calibrate_run(
        run_dir, data, accept_rate=accept_rate, split=split, device=device, score=score
    )


def doctor(
    dataset: str,
    out: str | Path | None = None,
    *,
    run: str | Path | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    folds: int = 5,
    epochs: int | None = None,
    write_exclude: str | Path | None = None,
    write_relabel: str | Path | None = None,
    progress: bool = True,
    **options,
) -> dict:
    """Examine a classification dataset for broken and odd images, duplicates and leakage,
    label errors, outliers and imbalance (:mod:`imrec.classify.doctor`); write ``doctor.json``,
    ``doctor.md`` and galleries into ``out`` (default ``runs/doctor-<dataset>``), and on request
    fixes lists for ``imrec train --exclude/--relabel``. Returns the report.

    ``options``: the other fields of :class:`~imrec.classify.doctor.DoctorConfig` (``near``,
    ``top``, ``gallery``, ``model``, ``val_fraction``, ``seed``).
    """
    from imrec.classify.doctor import DoctorConfig, diagnose

    if dataset_task(dataset) != "classify":
        raise TrainError(
            f"doctor: {dataset} is a detection dataset; the doctor checks classification data"
        )
    try:
        cfg = DoctorConfig(
            splits=tuple(splits),
            folds=folds,
            epochs=epochs,
            run=None if run is None else str(run),
            progress=progress,
            **options,
        )
    except TypeError as e:
        raise TrainError(f"doctor: {e}") from None
    name = dataset.replace("folder:", "").strip("/").replace("/", "_")
    folder = Path(out) if out else Path("runs") / f"doctor-{name}"
    report = diagnose(
        dataset, folder, cfg, write_exclude=write_exclude, write_relabel=write_relabel
    )
    report["report_dir"] = str(folder)
    return report


def load_predictor(source: str | Path, device: str = "cpu", **detect_options):
    """A :class:`~imrec.Predictor` or :class:`~imrec.DetectionPredictor`, whichever the
    checkpoint holds (``detect_options``: ``conf``, ``iou``, ``max_det`` for detectors)."""
    task = read_checkpoint_meta(source).get("task", "classify")
    options = detect_options if task == "detect" else {}
    return task_package(task).Predictor(source, device, **options)


def summary(report: dict) -> str:
    """The headline numbers of a training or evaluation report, in one line.

    Example:
        >>> summary({"task": "detect", "test": {"map": 0.5, "map50": 0.9, "map75": 0.4}})
        'mAP@[.5:.95] 0.5000, mAP@.5 0.9000, mAP@.75 0.4000'
    """
    return task_package(report.get("task", "classify")).summary(report)
