"""Honest evaluation: the best checkpoint (chosen on validation) measured once on the test split."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from imrec.classify.confidence import (
    COMBINED_MAX_CLASSES,
    DEFAULT_ACCEPT,
    FEATURE_IMAGES,
    Distance,
    decide,
    fit_confidence,
    fit_distance,
)
from imrec.classify.metrics import classification_metrics, reliability, worst_mistakes
from imrec.classify.report import write_report
from imrec.config import RunConfig
from imrec.core import timing
from imrec.core.batching import Batcher, predict_logits
from imrec.core.parallel import cpu_map
from imrec.core.preprocess import ImageReadError, form_part, prepare_source, soften_images
from imrec.data import ClassificationData, ImageSet, load_dataset, registry

DRAWN_FEATURE_IMAGES = 2_000  # feature statistics of rendered training sets: each is drawn
PLOTS = {
    "curves": "curves.png",
    "confusion": "confusion.png",
    "confused_pairs": "confused_pairs.png",
    "mistakes": "mistakes.png",
    "reliability": "reliability.png",
}


def _timed_logits(
    model,
    images: torch.Tensor,
    batcher: Batcher,
    batch_size: int,
    features_out=None,
    warm_up: bool = True,
) -> tuple[torch.Tensor, dict]:
    device = next(model.parameters()).device
    if warm_up:  # first-call costs are not throughput
        predict_logits(model, images[:batch_size], batcher, batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    logits = predict_logits(model, images, batcher, batch_size, features_out)
    seconds = time.perf_counter() - t0
    timing = {
        "images_per_second": round(len(images) / max(seconds, 1e-9), 1),
        "batch_size": batch_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    return logits, timing


def measure(
    model,
    split: ImageSet,
    classes: list[str],
    batcher: Batcher,
    out_dir: Path,
    *,
    batch_size: int = 1024,
    plots: bool = True,
    logits_out: list | None = None,
    features_out: list | None = None,
    warm_up: bool = True,
) -> tuple[dict, dict]:
    """Metrics and timing of ``model`` on ``split``; writes confusion.png and mistakes.png.

    The mistakes gallery shows the (at most 32) worst mistakes with their Grad-CAM overlays
    when the model has a ``cam_layer``. ``logits_out``, a list, receives the logits;
    ``features_out`` the penultimate features. ``warm_up``: run one batch untimed first
    (leave it off when the model has just run batches of this size).
    """
    logits, timing_ = _timed_logits(model, split.images, batcher, batch_size, features_out, warm_up)
    if logits_out is not None:
        logits_out.append(logits)
    metrics = classification_metrics(logits, split.labels, classes)
    if plots:
        with timing.phase("report"):
            _plots(model, split, classes, batcher, out_dir, logits, metrics)
    return metrics, timing_


def _plots(model, split, classes, batcher, out_dir, logits, metrics) -> None:
    """confusion.png (or confused_pairs.png) and mistakes.png with Grad-CAM."""
    import numpy as np

    from imrec.classify.viz import save_confused_pairs, save_confusion, save_mistakes

    if "confusion" in metrics:
        save_confusion(np.array(metrics["confusion"]), classes, out_dir / PLOTS["confusion"])
    else:  # too many classes for a matrix: the most frequent mistakes, as images
        pred = logits.argmax(1).tolist()
        save_confused_pairs(
            split.images, split.labels.tolist(), pred, metrics["confused_pairs"], classes,
            out_dir / PLOTS["confused_pairs"],
        )  # fmt: skip
    worst = worst_mistakes(logits, split.labels, n=32)
    if worst:
        from imrec.explain import gradcam_images

        probs = logits[worst].softmax(1)
        pred = probs.argmax(1)
        # Grad-CAM of the predicted class: where the model saw what it wrongly reported.
        overlays = gradcam_images(model, split.images[worst], batcher, target=pred)
        save_mistakes(
            split.images[worst],
            split.labels[worst].tolist(),
            pred.tolist(),
            probs.max(1).values.tolist(),
            classes,
            out_dir / PLOTS["mistakes"],
            overlays=overlays,
        )


def finish_run(trainer) -> dict:
    """After training: load the best checkpoint, measure it on val and test, write the report."""
    with timing.phase("evaluation"):
        return _finish_run(trainer)


def _finish_run(trainer) -> dict:
    from imrec.classify.viz import save_curves
    from imrec.core.checkpoint import load_checkpoint
    from imrec.core.version import __version__

    run_dir, data, run = trainer.run_dir, trainer.data, trainer.run
    weights, meta = load_checkpoint(run_dir / "best.safetensors")
    model = trainer.eval_model()
    model.load_state_dict(weights)
    bs = run.loop.eval_batch_size
    wants_features = len(data.classes) <= COMBINED_MAX_CLASSES  # for the default score
    val_logits: list = []
    val_feats: list | None = [] if wants_features else None
    epoch, *outputs = trainer.last_val_outputs or (None,)
    if epoch == trainer.best["epoch"]:  # the best model's outputs on val, computed after its epoch
        val_logits.append(outputs[0])
        if val_feats is not None:
            val_feats.append(outputs[1])
        val_metrics = classification_metrics(outputs[0], data.val.labels, data.classes)
    else:
        val_metrics, _ = measure(
            model, data.val, data.classes, trainer.batcher, run_dir, batch_size=bs, plots=False,
            logits_out=val_logits, features_out=val_feats, warm_up=False,
        )  # fmt: skip
    test_logits: list = []
    test_feats: list | None = [] if wants_features else None
    # No warm-up: the model has just run batches of this size on the validation split.
    figures = run.loop.figures  # off: a run kept only for its weights and scores
    test_metrics, timing_ = measure(
        model, data.test, data.classes, trainer.batcher, run_dir, batch_size=bs,
        logits_out=test_logits, features_out=test_feats, warm_up=False, plots=figures,
    )  # fmt: skip
    stats = None
    if wants_features:
        stats = feature_stats(model, data.train, trainer.batcher, bs, run.loop.seed)
    confidence = calibrate_checkpoint(
        run_dir / "best", weights, meta,
        (val_logits[0], data.val, val_feats[0] if stats else None),
        (test_logits[0], data.test, test_feats[0] if stats else None),
        f"the validation split of {data.name} ({len(data.val)} images)", stats=stats,
        exposed=bool(run.optim.outliers), figure=figures,
    )  # fmt: skip
    if figures:
        with timing.phase("report"):
            save_curves(trainer.history, run_dir / PLOTS["curves"])
    report = {
        "imrec_version": __version__,
        "task": "classify",
        "dataset": data.name,
        "dataset_checksum": data.checksum,
        "model": run.model.name,
        **({"members": run.model.members} if run.model.members > 1 else {}),
        "params": sum(p.numel() for p in model.parameters()),
        "split": data.split_note,
        "domain": {"name": data.domain, **(data.domain_evidence or {}), "ink": data.ink},
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "classes": data.classes,
        "input": meta["input"],
        "train_seconds": round(trainer.train_seconds, 2),
        "epochs_run": len(trainer.history),
        **trainer.time_limit_report(),
        "best_epoch": trainer.best["epoch"],  # the epoch whose weights the run keeps
        "val_top": {  # the best validation score, and how close to it the kept epoch had to be
            "epoch": trainer.top["epoch"],
            "val_accuracy": trainer.top[trainer.monitor],
            "margin": round(trainer.monitor_margin(trainer.top[trainer.monitor]), 6),
        },
        "device": str(trainer.device),
        "data_placement": trainer.placement,
        "data_workers": trainer.data_workers,  # streamed runs' DataLoader workers, else None
        "cuda_graphs": trainer.cuda_graphs,
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off",
        **trainer.parallel_info(),  # world_size, effective_batch_size, lr_scaling
        "init": trainer.init_note,
        "config": run.to_dict(),
        "skipped": data.skipped,
        "fixes": data.fixes,
        "val": val_metrics,
        "test": test_metrics,
        "confidence": confidence,
        "timing": {**timing_, **(timing.summary() or {})},
        # The figures drawn (confusion.png or confused_pairs.png, by the number of classes).
        "files": {k: v for k, v in PLOTS.items() if (run_dir / v).exists()},
    }
    with timing.phase("report"):
        write_report(run_dir, report)
    return report


def feature_stats(
    model, train: ImageSet, batcher: Batcher, batch_size: int, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict]:
    """The feature statistics of :class:`~imrec.classify.confidence.Distance` fitted on up to
    :data:`~imrec.classify.confidence.FEATURE_IMAGES` training images picked at random
    (unaugmented, the model in eval mode): ``(extras, how)``. Training images drawn on demand
    (renders) are drawn for this: :data:`DRAWN_FEATURE_IMAGES` of them at most."""
    with timing.phase("evaluation"):
        n = min(FEATURE_IMAGES, len(train))
        if getattr(train.images, "fresh", False):
            n = min(n, DRAWN_FEATURE_IMAGES)
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
        pick = pick.sort().values
        feats: list = []
        predict_logits(model, train.images[pick], batcher, batch_size, features_out=feats)
        stats = fit_distance(feats[0], train.labels[pick])
    how = {
        "images": n,
        "dim": int(feats[0].shape[1]),
        "fitted_on": f"{n:,} training images (no augmentation): class centres and one shared covariance",
    }
    return stats, how


def calibrate_checkpoint(
    stem: Path,
    weights: dict,
    meta: dict,
    fit: tuple[torch.Tensor, ImageSet, torch.Tensor | None],
    check: tuple[torch.Tensor, ImageSet, torch.Tensor | None],
    fitted_on: str,
    accept_rate: float = DEFAULT_ACCEPT,
    *,
    stats: tuple[dict[str, torch.Tensor], dict] | None = None,
    score: str | None = None,
    exposed: bool = False,
    figure: bool = True,
) -> dict:
    """Fit the temperature and rejection threshold on ``fit`` (logits, split, penultimate
    features or None), store them in the checkpoint ``stem`` (its ``confidence`` metadata,
    and the feature statistics ``stats`` = ``(extras, how)`` beside the weights) and measure
    them on ``check``: the report's ``confidence`` section (NLL and ECE before and after,
    acceptance on both splits, accuracy of the accepted), with the reliability diagram
    beside the checkpoint (``figure=False``: without it). ``score`` None: the default for the
    model's vocabulary and training (``exposed``: with outlier exposure)."""
    from imrec.classify.viz import save_reliability
    from imrec.core.checkpoint import save_checkpoint

    (fit_logits, fit_set, fit_f), (check_logits, check_set, check_f) = fit, check
    distance = Distance(**stats[0]) if stats else None
    with torch.no_grad():
        fit_d = distance(fit_f) if distance is not None else None
        check_d = distance(check_f) if distance is not None else None
    conf = fit_confidence(
        fit_logits, fit_set.labels, distance=fit_d, score=score, accept_rate=accept_rate,
        fitted_on=fitted_on, features=stats[1] if stats else None, exposed=exposed,
    )  # fmt: skip
    save_checkpoint(
        stem, weights, {**meta, "confidence": conf.meta()}, extras=stats[0] if stats else None
    )
    section = {k: v for k, v in conf.meta().items() if k != "quantiles"}
    parts = (("val", fit_logits, fit_set, fit_d), ("test", check_logits, check_set, check_d))
    for name, logits, split, dist in parts:
        before = reliability(logits, split.labels)
        after = reliability(logits / conf.temperature, split.labels)
        _, decided = decide(logits, split.images, conf, distance=dist)
        accepted = torch.tensor([not d["unknown"] for d in decided])
        right = logits.argmax(1) == split.labels
        section[name] = {
            "nll_before": _nll(logits, split.labels),
            "nll_after": _nll(logits / conf.temperature, split.labels),
            "ece_before": before["ece"],
            "ece_after": after["ece"],
            "accepted": round(float(accepted.float().mean()), 6),
            "accuracy_of_accepted": round(float(right[accepted].float().mean()), 6)
            if accepted.any()
            else None,
            "blank": sum(d["blank"] for d in decided),
        }
        if name == "test" and figure:
            save_reliability(before, after, stem.parent / PLOTS["reliability"])
    return section


def _nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return round(float(torch.nn.functional.cross_entropy(logits.float(), labels)), 6)


def align_classes(data: ClassificationData, chosen: ImageSet, classes: list[str]) -> ImageSet:
    """``chosen`` (images of ``data``) relabelled into the model's class order, matched by
    name: ``data`` may have fewer classes than the model (scored in the model's full space)."""
    if data.classes == classes:
        return chosen
    unknown = sorted(set(data.classes) - set(classes))
    if unknown:
        raise ValueError(
            f"dataset {data.name} has classes the model does not know: {unknown[:10]}; model classes: {classes[:20]}"
        )
    where = {c: i for i, c in enumerate(classes)}
    remap = torch.tensor([where[c] for c in data.classes])
    return ImageSet(chosen.images, remap[chosen.labels], chosen.groups)


def _chosen_split(data: ClassificationData, split: str) -> ImageSet:
    """The test split, or with ``split="all"`` every image of the dataset (for a model that
    never trained on it: zero-shot scoring of another dataset)."""
    if split == "test":
        return data.test
    if split != "all":
        raise ValueError(f"split must be 'test' or 'all', got {split!r}")
    return ImageSet.concat([data.train, data.val, data.test])


def evaluate_run(
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

    With ``data`` naming another dataset (e.g. ``folder:my_digits``), its test split is matched
    to the model's classes by name (the other dataset may have fewer classes: they are scored
    in the model's full space) and the results go to ``run_dir/eval-<name>/``. ``split="all"``
    scores every image of the other dataset instead (never of the run's own).

    ``ood`` (``"fashion-mnist,chars74k,scribbles"`` or a list): out-of-distribution sets,
    datasets or generated (``noise``, ``blank``, ``scribbles``), measured against the images
    evaluated (:mod:`imrec.classify.ood`): the report's ``ood`` section and ``ood.png``.
    ``ood_limit``: images of each dataset at most (default 10,000, picked at random).

    Example (the report is written into the run folder, so here into a copy of ``run``):
        >>> import shutil
        >>> report = evaluate_run(shutil.copytree(run, tmp / "run"))
        >>> report["test"]["accuracy"] > 0.9, Path(report["report_dir"]) == tmp / "run"
        (True, True)
    """
    from imrec.models.load import load_model

    run_dir = Path(run_dir)
    model, meta = load_model(run_dir, device)
    name = data or meta["dataset"]
    if split == "all" and name == meta["dataset"]:
        raise ValueError("--split all scores another dataset; the run trained on this one")
    cfg = _run_config(run_dir)
    dataset = load_for_model(name, meta, cfg)
    chosen = _chosen_split(dataset, split)
    if name != meta["dataset"] and (meta.get("ink") or {}).get("form"):  # handwriting
        chosen = _in_model_form(dataset, chosen, meta)
    elif name == meta["dataset"]:
        chosen = as_the_model_reads(dataset, chosen, meta)
    split_set = align_classes(dataset, chosen, meta["classes"])
    batcher = Batcher.from_stats(meta["input"]["mean"], meta["input"]["std"], device)
    out_dir = _eval_dir(run_dir, name, meta["dataset"])
    out_dir.mkdir(parents=True, exist_ok=True)
    ood_names, logits_out, feats_out = None, None, None
    if ood is not None:
        from imrec.classify.ood import parse_names, stored_rule

        ood_names = parse_names(ood)  # refused before any work
        stored_rule(meta)
        logits_out, feats_out = [], []  # the evaluated images' outputs, for the ood section
    metrics, timing = measure(
        model, split_set, meta["classes"], batcher, out_dir, batch_size=batch_size,
        logits_out=logits_out, features_out=feats_out,
    )  # fmt: skip
    report = _eval_report(out_dir, name, dataset, meta, metrics, timing)
    report["split_scored"] = split
    if ood_names:
        from imrec.classify.ood import LIMIT, feature_distance, measure_ood

        inside = (logits_out[0], feature_distance(model, feats_out[0]))
        report["ood"] = measure_ood(
            model, meta, cfg, split_set, ood_names, batcher,
            out_dir / "ood.png", limit=ood_limit or LIMIT, batch_size=batch_size,
            inside_outputs=inside,
        )  # fmt: skip
        report["files"]["ood"] = report["ood"]["figure"]
    write_report(out_dir, report)
    report["report_dir"] = str(out_dir)  # the run folder, or its eval-<name>/ for other data
    return report


def calibrate_run(
    run_dir: str | Path,
    data: str | None = None,
    *,
    accept_rate: float = DEFAULT_ACCEPT,
    split: str | None = None,
    batch_size: int = 1024,
    device: str = "cpu",
    score: str | None = None,
) -> dict:
    """Fit a run's temperature and rejection threshold again: on its own validation split
    (another ``accept_rate``), or on another dataset's images (``data``, e.g. a folder of
    the user's own real images: all of them unless ``split="test"``), since a threshold set on
    one source does not always carry to another. The best checkpoint's ``confidence`` is
    replaced (export again to carry it into a bundle); returns the new ``confidence`` section
    (``val``: the images it was fitted on; ``test``: the run's test split, or for other data
    the same images again), also written to ``run_dir/calibration.json``.

    ``score`` (one of :data:`~imrec.classify.confidence.SCORES`; None: the default for the
    model's vocabulary). On its own dataset the feature statistics are fitted again on its
    training split (a model trained before they existed gets them here); on other data the
    stored ones are kept (the classes' centres come from the training data).
    """
    from imrec.classify.confidence import FEATURE_SCORES, check_score
    from imrec.core.checkpoint import atomic_write_text, load_checkpoint
    from imrec.models.load import load_model

    run_dir = Path(run_dir)
    model, meta = load_model(run_dir, device)
    name = data or meta["dataset"]
    cfg = _run_config(run_dir)
    dataset = load_for_model(name, meta, cfg)
    check = None
    if name == meta["dataset"]:  # fitted on validation, measured on test
        chosen = as_the_model_reads(dataset, dataset.val, meta)
        check = as_the_model_reads(dataset, dataset.test, meta)
    else:
        chosen = _chosen_split(dataset, split or "all")
        if (meta.get("ink") or {}).get("form"):
            chosen = _in_model_form(dataset, chosen, meta)
        chosen = align_classes(dataset, chosen, meta["classes"])
    if score is not None:
        check_score(score)
    batcher = Batcher.from_stats(meta["input"]["mean"], meta["input"]["std"], device)
    stats = None
    run_cfg = RunConfig.from_dict(cfg)
    if name == meta["dataset"]:
        if len(meta["classes"]) <= COMBINED_MAX_CLASSES or score in FEATURE_SCORES:
            seed = run_cfg.loop.seed
            train = as_the_model_reads(dataset, dataset.train, meta)
            stats = feature_stats(model, train, batcher, batch_size, seed)
    elif Distance.from_extras(model.checkpoint_extras) is not None:
        stats = (model.checkpoint_extras, (meta.get("confidence") or {}).get("features"))
    feats: list = []
    logits = predict_logits(model, chosen.images, batcher, batch_size, features_out=feats)
    measured = (logits, chosen, feats[0])  # other data: measured on the images it was fitted on
    if check is not None:
        check_feats: list = []
        check_logits = predict_logits(
            model, check.images, batcher, batch_size, features_out=check_feats
        )
        measured = (check_logits, check, check_feats[0])
    weights, stored = load_checkpoint(run_dir / "best.safetensors")
    where = "validation split" if check is not None else f"{split or 'all'} images"
    section = calibrate_checkpoint(
        run_dir / "best", weights, stored, (logits, chosen, feats[0]), measured,
        f"the {where} of {name} ({len(chosen)} images)", accept_rate, stats=stats, score=score,
        exposed=bool(run_cfg.optim.outliers),
    )  # fmt: skip
    atomic_write_text(run_dir / "calibration.json", json.dumps(section, indent=2))
    return section


def _run_config(run_dir: Path) -> dict:
    """The run's saved config, or ``{}`` for a run folder without ``config.json``."""
    path = run_dir / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_for_model(name: str, meta: dict, cfg: dict) -> ClassificationData:
    """Dataset ``name`` for the model: its own loaded as the run did, another at its input.

    Another dataset for a model trained on the handwriting normal form is prepared the way
    ``imrec predict`` prepares files: a folder is read into the model's form; a built-in in
    another form (or none) goes image by image through :func:`prepare_image`.
    """
    inp = meta["input"]
    ink = meta.get("ink") or {}
    run = RunConfig.from_dict(cfg)
    prepared_later = False  # by _in_model_form, to the model's size and channels
    if name == meta["dataset"]:  # the way the run loaded it (its size and channel overrides)
        d = cfg.get("data", {})
        kwargs = {k: d.get(k) for k in ("size", "channels", "domain")}
        if kwargs["size"] is None and run.optim.keep_classes:
            kwargs["size"] = inp["size"][0]  # fine-tuned at its checkpoint's size
    elif ink.get("form") and meta.get("domain") == "handwriting":
        # A folder, or a built-in that prepares its originals at any size (chinese-mnist), is
        # read straight into the model's form, as imrec predict reads the files.
        direct = name.startswith("folder:") or _sized_builtin(name)
        kwargs = {"size": inp["size"][0] if direct else None, "domain": "handwriting"}
        prepared_later = True
    else:  # another dataset is brought to the model's input
        kwargs = {"size": inp["size"][0], "channels": inp["channels"], "domain": meta.get("domain")}
    val_fraction = cfg.get("data", {}).get("val_fraction", 0.1)
    dataset = load_dataset(name, val_fraction=val_fraction, seed=run.loop.seed, **kwargs)
    shape_differs = (
        list(dataset.input_size) != list(inp["size"]) or dataset.channels != inp["channels"]
    )
    if shape_differs and not prepared_later:
        raise ValueError(
            f"{name} images are {dataset.channels}x{list(dataset.input_size)}, the model takes {inp['channels']}x{inp['size']}"
        )
    return dataset


def _sized_builtin(name: str) -> bool:
    entry = registry.find(name)
    return bool(entry is not None and entry.sized)


def reads_softened(dataset: ClassificationData, meta: dict) -> bool:
    """Whether the model softens real images (:func:`~imrec.core.preprocess.soften`: it was
    trained on blurred renders, or fine-tuned from such a model) and ``dataset`` holds real
    images in its form: a dataset that names a softening itself is rendered (its images carry
    the renders' blur) and is read as it is."""
    model_ink, data_ink = meta.get("ink") or {}, dataset.ink or {}
    return bool(model_ink.get("soften")) and not data_ink.get("soften")


def softens_in_form(dataset: ClassificationData, meta: dict) -> bool:
    """Whether ``dataset`` holds real images already in the model's normal form that the model
    reads softened (:func:`reads_softened`): they need only the softening."""
    same_form = form_part(dataset.ink) == form_part(meta.get("ink"))
    return same_form and bool((dataset.ink or {}).get("form")) and reads_softened(dataset, meta)


def as_the_model_reads(dataset: ClassificationData, split: ImageSet, meta: dict) -> ImageSet:
    """A split of ``dataset`` as the model reads it: softened where :func:`softens_in_form`
    (a fine-tuned model's own data, a fine-tuning's new data), else as it is."""
    if not softens_in_form(dataset, meta):
        return split
    images = split.images if isinstance(split.images, torch.Tensor) else split.images[:]
    return ImageSet(soften_images(images, meta["ink"]), split.labels, split.groups)


def _in_model_form(dataset: ClassificationData, test: ImageSet, meta: dict) -> ImageSet:
    """Images ``test`` of ``dataset`` as the model's inputs: as they are when the dataset is
    already in the model's form and size, else each prepared like a file given to ``imrec
    predict``."""
    inp = meta["input"]
    model_ink, data_ink = meta["ink"] or {}, dataset.ink or {}
    same = form_part(data_ink) == form_part(model_ink)
    same = same and list(dataset.input_size) == list(inp["size"])
    sharp = reads_softened(dataset, meta)
    if same and dataset.channels == inp["channels"] and not sharp:
        return test
    images = test.images[:]  # (N, C, H, W) uint8
    if same:  # in the model's form: only softened and / or given the model's channels
        if sharp:
            images = soften_images(images[:, :1], model_ink)
        grey = images[:, :1].expand(-1, inp["channels"], -1, -1).contiguous()
        return ImageSet(grey, test.labels, test.groups)
    # Each image on its own, as `imrec predict` prepares a file: numpy work that holds the GIL,
    # so on every usable core (a whole `imrec eval --data mnist` of a 40 px model: 25.4 s in
    # one process, 20.4 s on 2 cores; BENCHMARKS.md).
    arrays = [x[0].numpy() if len(x) == 1 else x.permute(1, 2, 0).numpy() for x in images]
    prepare = partial(
        prepare_source,
        size=tuple(inp["size"]),
        channels=inp["channels"],
        domain="handwriting",
        ink=model_ink if sharp else form_part(model_ink),
    )
    prepared = cpu_map(prepare, arrays)
    for i, x in enumerate(prepared):
        if isinstance(x, str):  # the message prepare_source gives for an unusable image
            raise ImageReadError(f"image {i} of {dataset.name}'s test split: {x}")
    return ImageSet(torch.from_numpy(np.stack(prepared)), test.labels, test.groups)


def _eval_dir(run_dir: Path, name: str, own_dataset: str) -> Path:
    """The run folder for its own dataset, else ``eval-<name>/`` inside it."""
    if name == own_dataset:
        return run_dir
    return run_dir / f"eval-{name.replace('folder:', '').strip('/').replace('/', '_')}"


def _eval_report(
    out_dir: Path, name: str, dataset: ClassificationData, meta: dict, metrics: dict, timing: dict
) -> dict:
    """The report already in ``out_dir`` (a training report, say), updated with this evaluation."""
    report_path = out_dir / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    report.update(
        {
            "dataset": name,
            "dataset_checksum": dataset.checksum,
            "model": meta["model"]["name"],
            **({"members": m} if (m := meta["model"].get("members", 1)) > 1 else {}),
            "split": dataset.split_note,
            "classes": meta["classes"],
            "input": meta["input"],
            "skipped": dataset.skipped,
            "test": metrics,
            "timing": timing,
            "files": {k: v for k, v in PLOTS.items() if (out_dir / v).exists()},
        }
    )
    report.setdefault("task", "classify")
    report.setdefault("train_seconds", None)
    return report
