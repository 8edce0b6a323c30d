"""Score a detector: detections on a split, COCO metrics, figures and the run's report."""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from imrec.config import RunConfig
from imrec.core import timing
from imrec.core.preprocess import letter_fill, letterbox
from imrec.data.boxes import DetectionData, DetectionSet
from imrec.data.detection import load_detection
from imrec.detect.predict import load_detector


@torch.no_grad()
def detect_split(
    model,
    split: DetectionSet,
    channels: int,
    size: int,
    domain: str,
    *,
    batch_size: int = 32,
    score_thresh: float = 0.001,
    nms_iou: float = 0.5,
    max_det: int = 100,
    images: list[torch.Tensor] | None = None,
) -> tuple[list[dict], dict]:
    """Predictions for every image of ``split`` in its own pixels, and the timing.

    Images are letterboxed to ``size``; boxes are scaled back by the letterbox scale. A low
    ``score_thresh`` is right for mAP (the ranking counts, not a cut).
    """
    device = next(model.parameters()).device
    fill = letter_fill(domain)
    out: list[dict] = []
    seconds = 0.0
    for start in range(0, len(split), batch_size):
        idx = range(start, min(len(split), start + batch_size))
        batch, scales = [], []
        for i in idx:
            img = images[i] if images is not None else split.load_image(i, channels)
            img, _, scale = letterbox(img, torch.zeros(0, 4), size, fill)
            batch.append(img)
            scales.append(scale)
        x = torch.stack(batch).to(device).float().div_(255)
        t0 = time.perf_counter()
        dets = model.detect(x, score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        for d, scale in zip(dets, scales, strict=True):
            out.append(
                {
                    "boxes": d["boxes"].float().cpu() / scale,
                    "scores": d["scores"].float().cpu(),
                    "labels": d["labels"].cpu(),
                }
            )
    timing = {
        "images_per_second": round(len(split) / max(seconds, 1e-9), 1),
        "batch_size": batch_size,
        "image_size": size,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    return out, timing


PRELOAD_LIMIT_BYTES = 2 << 30  # decode whole splits into memory below this size
PLOTS = {"curves": "curves.png", "pr": "pr.png", "predictions": "predictions.png"}


def preload(split: DetectionSet, channels: int) -> list[torch.Tensor] | None:
    """Every image of the split decoded once (threads), when the split is small enough."""
    n = len(split)
    if n == 0:
        return []
    approx = sum(h * w for h, w in split.sizes) * channels
    if approx > PRELOAD_LIMIT_BYTES:
        return None
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda i: split.load_image(i, channels), range(n)))


def _summary(metrics: dict) -> dict:
    """The metrics without the bulky PR arrays (those go into pr.png)."""
    return {k: v for k, v in metrics.items() if k != "pr"}


def measure_detection(
    model,
    split: DetectionSet,
    classes: list[str],
    channels: int,
    size: int,
    domain: str,
    out_dir: Path | None,
    *,
    images: list[torch.Tensor] | None = None,
    figures: bool = True,
) -> tuple[dict, dict]:
    """COCO metrics and timing of ``model`` on ``split``.

    With ``out_dir`` (the split the report is about): one-image-at-a-time speed is measured
    too, and pr.png and predictions.png are written there unless ``figures`` is off.
    """
    from imrec.detect.metrics import coco_evaluate, match_summary

    model.eval()
    preds, timing = detect_split(model, split, channels, size, domain, images=images)
    metrics = coco_evaluate(split, preds, classes)
    metrics["at_0.5"] = match_summary(split, preds, iou=0.5, score_thresh=0.5)
    if out_dir is not None:
        timing["single_image_per_second"] = _single_image_rate(model, channels, size)
    if out_dir is not None and figures:
        from imrec.detect.viz import save_detection_grid, save_pr_curves

        save_pr_curves(metrics, out_dir / PLOTS["pr"])
        n = min(12, len(split))
        shown = [
            images[i] if images is not None else split.load_image(i, channels) for i in range(n)
        ]
        keep = [
            {k: v[p["scores"] >= 0.3] for k, v in p.items()} for p in preds[:n]
        ]  # a readable gallery: confident boxes only
        save_detection_grid(shown, keep, classes, out_dir / PLOTS["predictions"],
                            title="test predictions (score >= 0.3)")  # fmt: skip
    return metrics, timing


@torch.no_grad()
def _single_image_rate(model, channels: int, size: int, repeats: int = 10) -> float:
    device = next(model.parameters()).device
    x = torch.rand(1, channels, size, size, device=device)
    model.detect(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.detect(x)
    return round(repeats / (time.perf_counter() - t0), 1)


def _report(
    trainer_or_meta: dict, data: DetectionData, val: dict | None, test: dict, timing: dict
) -> dict:
    from imrec.core.version import __version__

    return {
        "imrec_version": __version__,
        "task": "detect",
        "dataset": data.name,
        "dataset_checksum": data.checksum,
        "split": data.split_note,
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "boxes": {
            "train": data.train.num_boxes(),
            "val": data.val.num_boxes(),
            "test": data.test.num_boxes(),
        },
        "annotations": data.annotations.to_dict(),
        "classes": data.classes,
        **trainer_or_meta,
        "val": val,
        "test": test,
        "timing": timing,
    }


def finish_detection_run(trainer) -> dict:
    """Best checkpoint on val and test; writes report.json, report.md and the figures."""
    with timing.phase("evaluation"):
        return _finish_detection_run(trainer)


def _finish_detection_run(trainer) -> dict:
    from imrec.core.checkpoint import load_checkpoint
    from imrec.detect.report import write_detection_report
    from imrec.detect.viz import save_detection_curves

    run_dir, data, run = trainer.run_dir, trainer.data, trainer.run
    weights, meta = load_checkpoint(run_dir / "best.safetensors")
    model = trainer.eval_model()
    model.load_state_dict(weights)
    val, _ = measure_detection(
        model, data.val, data.classes, data.channels, trainer.size, trainer.domain, None,
        images=trainer.val_set.images,
    )  # fmt: skip
    test_images = preload(data.test, data.channels)
    test, speed = measure_detection(
        model, data.test, data.classes, data.channels, trainer.size, trainer.domain, run_dir,
        images=test_images, figures=run.loop.figures,
    )  # fmt: skip
    if run.loop.figures:
        with timing.phase("report"):
            save_detection_curves(trainer.history, run_dir / PLOTS["curves"])
    report = _report(
        {
            "model": run.model.name,
            "params": sum(p.numel() for p in model.parameters()),
            "input": meta["input"],
            "train_seconds": round(trainer.train_seconds, 2),
            "epochs_run": len(trainer.history),
            **trainer.time_limit_report(),
            "best_epoch": trainer.best["epoch"],
            "device": str(trainer.device),
            **trainer.parallel_info(),  # world_size, effective_batch_size, lr_scaling
            "init": trainer.init_note,
            "augment": dataclasses.asdict(trainer.augment) if trainer.augment else None,
            "config": run.to_dict(),
        },
        data,
        _summary(val),
        _summary(test),
        {**speed, **(timing.summary() or {})},
    )
    report["files"] = {k: v for k, v in PLOTS.items() if (run_dir / v).exists()}
    with timing.phase("report"):
        write_detection_report(run_dir, report)
    return report


def evaluate_detection_run(
    run_dir: str | Path, data: str | None = None, *, device: str = "cpu"
) -> dict:
    """Evaluate a detection run's best checkpoint on its test split (or another dataset's).

    Results for another dataset go to ``run_dir/eval-<name>/``; classes are matched by name.
    """
    from imrec.detect.report import write_detection_report

    run_dir = Path(run_dir)
    model, meta = load_detector(run_dir, device)
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    name = data or meta["dataset"]
    dataset = load_detection(
        name,
        val_fraction=cfg.get("data", {}).get("val_fraction", 0.1),
        seed=RunConfig.from_dict(cfg).loop.seed,
        channels=meta["input"]["channels"],
    )
    unknown = sorted(set(dataset.classes) - set(meta["classes"]))
    if unknown:
        raise ValueError(f"{name} has classes the model does not know: {unknown[:10]}")
    if dataset.classes != meta["classes"]:
        remap = torch.tensor([meta["classes"].index(c) for c in dataset.classes])
        dataset.test.labels = [remap[lab] for lab in dataset.test.labels]
        dataset.classes = meta["classes"]
    out_dir = run_dir if name == meta["dataset"] else run_dir / f"eval-{_safe(name)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    size, domain = meta["input"]["size"][0], meta.get("domain", "photo")
    test, timing = measure_detection(
        model, dataset.test, dataset.classes, dataset.channels, size, domain, out_dir,
        images=preload(dataset.test, dataset.channels),
    )  # fmt: skip
    report_path = out_dir / "report.json"
    old = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    report = {
        **old,
        **_report(
            {"model": meta["model"]["name"], "input": meta["input"]},
            dataset,
            old.get("val"),
            _summary(test),
            timing,
        ),
    }
    report.setdefault("train_seconds", None)
    report["files"] = {k: v for k, v in PLOTS.items() if (out_dir / v).exists()}
    write_detection_report(out_dir, report)
    report["report_dir"] = str(out_dir)
    return report


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")
