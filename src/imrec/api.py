"""The few calls a user needs, in Python: the CLI is a thin layer over these."""

from __future__ import annotations

from pathlib import Path

from imrec.config import RunConfig, build_config
from imrec.engine import train as _train


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

    ``task`` is ``"classify"`` or ``"detect"``; by default it follows the dataset (detection
    datasets: ``digits-detect``, ``coco128``, ``coco:...``, ``yolo:...``). Returns the report
    (also written to ``<out>/report.json`` and ``report.md``), with the run folder under
    ``report["run_dir"]``.

    Example:
        >>> import imrec
        >>> report = imrec.fit("digits", train={"epochs": 2}, out="runs/digits")  # doctest: +SKIP
        >>> report["test"]["accuracy"] > 0.9  # doctest: +SKIP
        True
        >>> report = imrec.fit("digits-detect", out="runs/dd")  # doctest: +SKIP
        >>> report["test"]["map50"]  # doctest: +SKIP
    """
    from imrec.data.detection import is_detection_dataset

    data = dict(data or {})
    seed = (train or {}).get("seed", 0)
    task = task or ("detect" if is_detection_dataset(dataset) else "classify")
    if task == "detect":
        return _fit_detector(dataset, preset, out, data, model, train, progress)
    loaded = _train.load_for_training(
        dataset,
        (train or {}).get("data_placement", "auto"),
        val_fraction=data.get("val_fraction", 0.1),
        seed=seed,
        size=data.get("size"),
        channels=data.get("channels"),
        domain=data.get("domain"),
    )
    data.setdefault("domain", loaded.domain)
    model = dict(model or {})
    if (train or {}).get("init") and "name" not in model:
        model = {**_model_of(train["init"]), **model}  # fine-tune the checkpoint's own network
    run = build_config(dataset, loaded.domain, preset, data=data, model=model, train=train)
    run_dir = Path(out) if out else _train.default_run_dir(dataset)
    report = _train.train(run, run_dir, progress=progress, data=loaded)
    report["run_dir"] = str(run_dir)
    return report


def _fit_detector(dataset, preset, out, data, model, train, progress) -> dict:
    from imrec.data.detection import load_detection
    from imrec.engine.detect import train_detector

    loaded = load_detection(
        dataset,
        val_fraction=data.get("val_fraction", 0.1),
        seed=(train or {}).get("seed", 0),
        channels=data.get("channels"),
    )
    data.setdefault("domain", loaded.domain)
    run = build_config(
        dataset, loaded.domain, preset, data=data, model=model, train=train, task="detect"
    )
    run_dir = Path(out) if out else _train.default_run_dir(dataset.split(":", 1)[0])
    report = train_detector(run, run_dir, progress=progress, data=loaded)
    report["run_dir"] = str(run_dir)
    return report


def _model_of(checkpoint: str | Path) -> dict:
    from imrec.engine.checkpoint import CheckpointError, read_checkpoint_meta
    from imrec.engine.train import TrainError
    from imrec.models.registry import architecture_options

    try:
        meta = read_checkpoint_meta(checkpoint)
    except CheckpointError as e:
        raise TrainError(f"--init: {e}") from e
    m = meta["model"]
    return {
        "name": m["name"],
        "options": architecture_options(m.get("options", {})),
        "weight_norm": m.get("weight_norm", False),
    }


def resume(run_dir: str | Path, *, progress: bool = True) -> dict:
    """Continue a run that was stopped or killed, from its last complete epoch."""
    report = _train.resume(run_dir, progress=progress)
    report["run_dir"] = str(run_dir)
    return report


def train_config(run: RunConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Train from a fully resolved :class:`RunConfig` (e.g. one read from a ``config.json``)."""
    if run.task == "detect":
        from imrec.engine.detect import train_detector

        report = train_detector(run, out, progress=progress)
    else:
        report = _train.train(run, out, progress=progress)
    report["run_dir"] = str(out)
    return report
