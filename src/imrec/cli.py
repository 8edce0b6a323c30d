"""``imrec`` command line: each command parses its flags and calls the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _kv(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as JSON when it parses (numbers, true, lists)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# ---- data -----------------------------------------------------------------------------


def cmd_data_list(args) -> int:
    from imrec.data import list_datasets

    for name, desc in list_datasets().items():
        print(f"{name:18s} {desc}")
    return 0


def cmd_data_get(args) -> int:
    from imrec.data import dataset_info, fetch_dataset

    info = dataset_info(args.name)
    folder = fetch_dataset(args.name)
    print(f"{info.name}: files verified in {folder}")
    return 0


def cmd_data_show(args) -> int:
    import torch

    from imrec.data import load_dataset
    from imrec.viz import save_class_grid

    data = load_dataset(args.name, size=args.size, channels=args.channels, domain=args.domain)
    split = data.train
    out = Path(
        args.out
        or f"{data.name.replace('folder:', '').strip('/').replace('/', '_')}{'-augment' if args.augment else ''}.png"
    )
    images = split.images
    title = f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {data.channels}x{data.input_size[0]}x{data.input_size[1]}"
    if args.augment:
        from imrec.config import build_config
        from imrec.engine.train import build_augment

        # Exactly what `imrec train NAME --preset P` applies (the recipe may switch options off).
        aug = build_augment(build_config(data.name, data.domain, args.preset), data.domain)
        if aug is None:
            raise ValueError(f"the {args.preset} recipe for {data.name} uses no augmentation")
        pick = _first_per_class(split.labels, data.num_classes, args.per_class)
        gen = torch.Generator().manual_seed(args.seed)
        x = aug(split.images[pick].float() / 255.0, gen)
        images = torch.zeros_like(split.images)
        images[pick] = (x * 255).round().clamp(0, 255).to(torch.uint8)
        title += f"; {args.preset} '{data.domain}' augmentation"
    save_class_grid(images, split.labels, data.classes, out, per_class=args.per_class, title=title)
    print(out)
    return 0


def _first_per_class(labels, num_classes: int, k: int):
    import torch

    return torch.cat([torch.nonzero(labels == c).flatten()[:k] for c in range(num_classes)])


# ---- models ---------------------------------------------------------------------------


def cmd_models(args) -> int:
    from imrec.models import list_models

    for name, desc in list_models().items():
        print(f"{name:24s} {desc}")
    print(f"{'tv:NAME':24s} any torchvision classifier, e.g. tv:resnet18 (--pretrained FILE)")
    print(f"{'timm:NAME':24s} any timm model, when timm is installed (pip install timm)")
    return 0


# ---- train / eval / predict -----------------------------------------------------------


def cmd_train(args) -> int:
    import imrec

    if args.resume:
        report = imrec.resume(args.resume, progress=not args.quiet)
    else:
        if not args.dataset:
            raise SystemExit(
                "imrec train: give a DATASET (see `imrec data list`) or --resume RUN_DIR"
            )
        data = {
            k: v
            for k, v in {
                "val_fraction": args.val_fraction,
                "size": args.size,
                "channels": args.channels,
                "domain": args.domain,
            }.items()
            if v is not None
        }
        if args.no_augment:
            data["augment"] = "none"
        if args.augment_off:
            data["augment_off"] = tuple(s for s in args.augment_off.split(",") if s)
        model: dict = {}
        if args.model:
            model["name"] = args.model
        options = dict(args.model_opt or [])
        if args.pretrained:
            options["pretrained"] = args.pretrained
        if options:
            model["options"] = options
        if args.weight_norm:
            model["weight_norm"] = True
        flags = [
            "epochs",
            "batch_size",
            "optimizer",
            "lr",
            "weight_decay",
            "schedule",
            "warmup_epochs",
            "label_smoothing",
            "grad_clip",
            "ema_decay",
            "early_stop",
            "seed",
            "init",
            "freeze_epochs",
            "head_lr_mult",
            "device",
            "amp",
            "threads",
        ]
        train = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
        for k in ("ema", "class_weights"):
            if getattr(args, k):
                train[k] = True
        report = imrec.fit(
            args.dataset,
            preset=args.preset,
            out=args.out,
            data=data,
            model=model,
            train=train,
            progress=not args.quiet,
        )
    _print_summary(report)
    return 0


def _print_summary(report: dict) -> None:
    t = report["test"]
    run_dir = Path(report.get("run_dir", "."))
    print(
        f"{report['dataset']} / {report['model']}: test accuracy {t['accuracy']:.4f}, macro F1 {t['macro_f1']:.4f}, "
        f"top-5 {t['top5']:.4f}, ECE {t['ece']:.4f} (trained {report.get('train_seconds')} s)"
    )
    print(f"report: {run_dir / 'report.md'}")


def cmd_eval(args) -> int:
    from imrec.engine.evaluate import evaluate_run

    report = evaluate_run(args.run_dir, args.data, device=args.device)
    t = report["test"]
    print(
        f"{report['dataset']}: accuracy {t['accuracy']:.4f}, macro F1 {t['macro_f1']:.4f}, top-5 {t['top5']:.4f}, ECE {t['ece']:.4f}, {report['timing']['images_per_second']:.0f} images/s"
    )
    print(f"report: {Path(report['report_dir']) / 'report.md'}")
    return 0


def cmd_predict(args) -> int:
    from imrec.inference import Predictor, expand_inputs

    paths = expand_inputs(args.images)
    if not paths:
        raise SystemExit("imrec predict: no images found in " + " ".join(args.images))
    results = Predictor(args.model, device=args.device).predict(paths, top_k=args.top_k)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['input']}: ERROR {r['error']}")
                continue
            tops = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
            print(f"{r['input']}: {tops}")
    return 1 if any("error" in r for r in results) else 0


# ---- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imrec", description="Train, evaluate and use image classifiers."
    )
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="list, download and look at datasets").add_subparsers(
        dest="data_command", required=True
    )
    data.add_parser("list", help="the registered datasets").set_defaults(func=cmd_data_list)
    g = data.add_parser(
        "get", help="download (or take from IMREC_DATA_MIRROR) and verify a dataset"
    )
    g.add_argument("name")
    g.set_defaults(func=cmd_data_get)
    s = data.add_parser("show", help="a PNG grid of samples per class")
    s.add_argument("name")
    s.add_argument(
        "--augment", action="store_true", help="show the images after training-time augmentation"
    )
    s.add_argument(
        "--preset",
        choices=["fast", "best"],
        default="fast",
        help="the training preset whose augmentation --augment shows",
    )
    s.add_argument("--per-class", type=int, default=8)
    s.add_argument("--out", help="PNG path (default: NAME.png)")
    s.add_argument("--seed", type=int, default=0)
    _data_flags(s)
    s.set_defaults(func=cmd_data_show)

    sub.add_parser("models", help="the registered models").set_defaults(func=cmd_models)

    t = sub.add_parser("train", help="train a classifier")
    t.add_argument("dataset", nargs="?", help="a name from `imrec data list`, or folder:PATH")
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a stopped run (no other arguments needed)"
    )
    t.add_argument("--model", help="a name from `imrec models` (default: the preset's)")
    t.add_argument("--preset", choices=["fast", "best"], default="fast")
    t.add_argument("--out", help="run folder (default: runs/<dataset>-N)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--schedule", choices=["onecycle", "cosine", "constant"])
    t.add_argument("--warmup-epochs", type=float)
    t.add_argument("--label-smoothing", type=float)
    t.add_argument("--grad-clip", type=float, help="clip the gradient norm (0 = off)")
    t.add_argument(
        "--ema",
        action="store_true",
        help="evaluate and save an exponential moving average of the weights",
    )
    t.add_argument("--ema-decay", type=float)
    t.add_argument(
        "--early-stop",
        type=int,
        metavar="PATIENCE",
        help="stop after this many epochs without a better validation accuracy",
    )
    t.add_argument(
        "--class-weights", action="store_true", help="weigh the loss by inverse class frequency"
    )
    t.add_argument("--seed", type=int)
    t.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from an imrec checkpoint or run folder (fine-tuning)",
    )
    t.add_argument(
        "--pretrained",
        metavar="WEIGHTS",
        help="torchvision/timm weights: a local file or a weights name",
    )
    t.add_argument(
        "--freeze-epochs", type=int, help="train only the head for this many epochs first"
    )
    t.add_argument(
        "--head-lr-mult", type=float, help="the head's learning rate relative to the backbone's"
    )
    t.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"])
    t.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    t.add_argument(
        "--weight-norm",
        action="store_true",
        help="weight normalisation on every conv and linear layer",
    )
    t.add_argument(
        "--model-opt",
        type=_kv,
        action="append",
        metavar="KEY=VALUE",
        help="a model option, e.g. width=48",
    )
    t.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    t.add_argument(
        "--augment-off",
        metavar="OPT,OPT",
        help="switch single augmentations off, e.g. elastic,erasing",
    )
    t.add_argument("--val-fraction", type=float)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _data_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run's best checkpoint on the test split")
    e.add_argument("run_dir")
    e.add_argument("--data", help="another dataset with the same classes (e.g. folder:PATH)")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="top-k labels for image files, folders or globs")
    pr.add_argument("model", help="a run folder or a checkpoint (.safetensors)")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=cmd_predict)
    return p


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, help="folder datasets: image side in pixels")
    p.add_argument(
        "--channels", type=int, choices=[1, 3], help="folder datasets: 1 (grey) or 3 (colour)"
    )
    p.add_argument(
        "--domain",
        choices=["handwriting", "objects", "photo"],
        help="folder datasets: picks augmentation and input preparation",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from imrec.data import DatasetError
    from imrec.engine.checkpoint import CheckpointError
    from imrec.engine.train import TrainError

    try:
        return args.func(args)
    except (
        DatasetError,
        CheckpointError,
        TrainError,
        FileNotFoundError,
        ValueError,
        KeyError,
    ) as e:
        print(f"imrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "imrec: interrupted; a training run can be continued with `imrec train --resume RUN_DIR`",
            file=sys.stderr,
        )
        return 130
