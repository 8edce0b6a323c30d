"""``imrec`` command line: each command parses its flags and calls the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from imrec.config import RENAMED_OPTIONS, SERVE_BURST, SERVE_RATE, TRAIN_GROUPS, TrainConfig
from imrec.core import heap, openmp
from imrec.core.checks import ABOVE_0, check_number


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
    from imrec.data.detection import list_detection_datasets

    for name, desc in {**list_datasets(), **list_detection_datasets()}.items():
        print(f"{name:18s} {desc}")
    return 0


def cmd_data_get(args) -> int:
    from imrec.api import task_package
    from imrec.data import dataset_task

    print(task_package(dataset_task(args.name)).get_data(args.name))
    return 0


def cmd_data_show(args) -> int:
    from imrec.api import task_package
    from imrec.data import dataset_task

    out = task_package(dataset_task(args.name)).save_samples(
        args.name,
        args.out,
        augment=args.augment,
        preset=args.preset,
        per_class=args.per_class,
        seed=args.seed,
        size=args.size,
        channels=args.channels,
        domain=args.domain,
    )
    print(out)
    return 0


def cmd_data_convert(args) -> int:
    from imrec.data.convert import convert_dataset

    result = convert_dataset(
        args.source, args.out, args.to, images=args.images, overwrite=args.overwrite
    )
    print(f"{args.source} -> {result.path} ({args.to}): {result.report.summary()}")
    for line in result.report.examples[:10]:
        print(f"  {line}")
    return 0


# ---- models ---------------------------------------------------------------------------


def cmd_models(args) -> int:
    from imrec.models import list_models
    from imrec.models.detectors import list_detectors

    if args.task in (None, "detect"):
        for name, desc in list_detectors().items():
            print(f"{name:24s} [detect] {desc}")
        if args.task == "detect":
            return 0
    for name, desc in list_models().items():
        print(f"{name:24s} {desc}")
    print(
        f"{'tv:NAME':24s} any torchvision classifier, e.g. tv:resnet18 "
        "(--pretrained FILE or a torchvision weights name such as IMAGENET1K_V1)"
    )
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
        if args.augment_renders is not None:
            data["augment_renders"] = args.augment_renders
        for key in ("exclude", "relabel"):  # absolute: a resumed run finds them from anywhere
            if getattr(args, key):
                data[key] = str(Path(getattr(args, key)).expanduser().resolve())
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
        if args.members is not None:
            model["members"] = args.members
        train = config_values(args, TrainConfig)
        report = imrec.fit(
            args.dataset,
            task=args.task,
            preset=args.preset,
            out=args.out,
            data=data,
            model=model,
            train=train,
            progress=not args.quiet,
        )
    from imrec.engine.distributed import is_main

    if is_main():  # under torchrun, every rank returns the report; one prints it
        _print_summary(report)
    return 0


def _print_summary(report: dict) -> None:
    from imrec.api import summary
    from imrec.classify.report import members_text

    print(
        f"{report['dataset']} / {report['model']}{members_text(report)}: test {summary(report)} "
        f"(trained {report.get('train_seconds')} s)"
    )
    print(f"report: {Path(report.get('run_dir', '.')) / 'report.md'}")


def cmd_eval(args) -> int:
    import imrec
    from imrec.api import summary

    report = imrec.evaluate(
        args.run_dir, args.data, device=args.device, split=args.split, ood=args.ood,
        ood_limit=args.ood_limit,
    )  # fmt: skip
    rate = report["timing"]["images_per_second"]
    print(f"{report['dataset']}: {summary(report)}, {rate:.0f} images/s")
    if report.get("ood"):
        o = report["ood"]
        i = o["in_distribution"]
        print(
            f"unknown answers ({o['score']}): {i['accepted']:.1%} of the {i['n']:,} images "
            "evaluated accepted"
        )
        for name, s in o["sets"].items():
            print(
                f"  {name}: AUROC {s['auroc']:.4f}, {s['rejected']:.1%} rejected at the "
                f"threshold, {s['fpr_at_95_tpr']:.1%} accepted at 95% TPR ({s['n']} images)"
            )
    print(f"report: {Path(report['report_dir']) / 'report.md'}")
    return 0


def cmd_doctor(args) -> int:
    import imrec

    report = imrec.doctor(
        args.dataset,
        args.out,
        run=args.run,
        splits=tuple(s for s in args.splits.split(",") if s),
        folds=args.folds,
        epochs=args.epochs,
        write_exclude=args.write_exclude,
        write_relabel=args.write_relabel,
        progress=not args.quiet,
        near=args.near,
        top=args.top,
        size=args.size,
    )
    found = ", ".join(f"{s} {v['flagged']}" for s, v in report["labels"].items())
    dup = report["duplicates"]["counts"]
    print(
        f"{report['dataset']}: label issues {found}; duplicate groups {dup['exact_groups']} "
        f"exact, {dup['near_groups']} near ({dup['across_splits']} across splits, "
        f"{dup['conflicting']} with conflicting labels); blank {len(report['integrity']['blank'])}, "
        f"unreadable {len(report['integrity']['unreadable'])}; {report['seconds']} s"
    )
    print(f"report: {Path(report['report_dir']) / 'doctor.md'}")
    for kind, path in report["files"].items():
        if kind in ("exclude", "relabel"):
            print(f"{kind} list: {path} (use with imrec train --{kind})")
    return 0


def cmd_calibrate(args) -> int:
    import imrec

    c = imrec.calibrate(
        args.run_dir, args.data, accept_rate=args.accept_rate, split=args.split, score=args.score
    )
    print(
        f"temperature {c['temperature']}, {c['score']} threshold {c['threshold']:.6g} "
        f"(accepts {c['accept_rate']:.1%} of {c['fitted_on']}); "
        f"NLL {c['val']['nll_before']} -> {c['val']['nll_after']}, "
        f"ECE {c['val']['ece_before']} -> {c['val']['ece_after']}"
    )
    print(f"written to {Path(args.run_dir) / 'best.safetensors'}; export again for bundles")
    return 0


def cmd_predict(args) -> int:
    from imrec.classify.predict import Predictor
    from imrec.core.checkpoint import read_checkpoint_meta
    from imrec.core.preprocess import expand_inputs
    from imrec.models.load import is_bundle

    paths = expand_inputs(args.images)
    if not paths:
        raise SystemExit("imrec predict: no images found in " + " ".join(args.images))
    if is_bundle(args.model):
        return _predict_bundle(args, paths)
    if read_checkpoint_meta(args.model).get("task") == "detect":
        return _predict_boxes(args, paths)
    results = Predictor(args.model, device=args.device).predict(
        paths, top_k=args.top_k, **_reject_options(args)
    )
    return _print_results(results, args.json)


def _reject_options(args) -> dict:
    """``--accept-rate`` and ``--no-reject`` as predict options (classifiers)."""
    from imrec.classify.confidence import check_accept_rate

    options: dict = {}
    if args.accept_rate is not None:
        check_accept_rate(args.accept_rate)
        options["accept_rate"] = args.accept_rate
    if args.no_reject:
        options["reject"] = False
    return options


def _predict_bundle(args, paths: list[Path]) -> int:
    """An export bundle, through the runtime (ONNX Runtime unless --backend torch)."""
    import imrec

    if args.draw:
        raise ValueError("--draw needs a run folder; a bundle prints or --json its boxes")
    model = imrec.load(args.model, backend=args.backend, device=args.device,
                       score_thresh=args.conf, nms_iou=args.iou, max_det=args.max_det)  # fmt: skip
    return _print_results(
        model.predict(paths, top_k=args.top_k, **_reject_options(args)), args.json
    )


def _print_results(results: list[dict], as_json: bool) -> int:
    """Print top-k labels or boxes per input (or JSON); 1 when an input had an error."""
    failed = 1 if any("error" in r for r in results) else 0
    if as_json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return failed
    for r in results:
        if "error" in r:
            print(f"{r['input']}: ERROR {r['error']}")
        elif "top" in r:
            tops = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
            verdict = "blank  " if r.get("blank") else "unknown  " if r.get("unknown") else ""
            print(f"{r['input']}: {verdict}{tops}")
        else:
            found = ", ".join(
                f"{b['label']} {b['score']:.2f} [{', '.join(f'{v:.0f}' for v in b['box'])}]"
                for b in r["boxes"]
            )
            print(f"{r['input']}: {len(r['boxes'])} boxes  {found}")
    return failed


def _predict_boxes(args, paths: list[Path]) -> int:
    from imrec.detect.predict import DetectionPredictor

    predictor = DetectionPredictor(
        args.model, args.device, score_thresh=args.conf, nms_iou=args.iou, max_det=args.max_det
    )
    pairs = predictor.detect(paths)
    results = [r for _, r in pairs]
    if args.draw:
        _draw(pairs, predictor.classes, Path(args.draw))
    return _print_results(results, args.json)


def _draw(pairs, classes: list[str], out_dir: Path) -> None:
    """Write each image with its boxes drawn to ``out_dir/<name>.png`` (one per input)."""
    import torch

    from imrec.detect.viz import draw_boxes

    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for image, r in pairs:
        if image is None:
            continue
        stem = Path(r["input"]).stem or "image"
        name, k = stem, 1
        while name in used:
            k += 1
            name = f"{stem}-{k}"
        used.add(name)
        boxes = torch.tensor([b["box"] for b in r["boxes"]]).reshape(-1, 4)
        labels = torch.tensor([classes.index(b["label"]) for b in r["boxes"]], dtype=torch.long)
        scores = torch.tensor([b["score"] for b in r["boxes"]])
        draw_boxes(image, boxes, labels, classes, scores).save(out_dir / f"{name}.png")
        r["drawn"] = str(out_dir / f"{name}.png")


# ---- export ---------------------------------------------------------------------------


def cmd_export(args) -> int:
    from imrec.deploy.bundle import read_manifest
    from imrec.deploy.export import export_bundle

    bundle = export_bundle(args.run_dir, args.out, quantize=args.quantize, opset=args.opset,
                           parity_limit=args.parity_limit)  # fmt: skip
    m = read_manifest(bundle)
    p = m["parity"]
    agreement = p.get("top1_agreement", p.get("detection_agreement"))
    diff = p.get("max_abs_prob_diff", p.get("max_abs_map_diff"))
    print(f"bundle: {bundle} ({m['model']['name']}, version {m['model_version']})")
    print(f"parity: PyTorch and ONNX Runtime agree on {agreement:.2%} of {p['n']} test "
          f"images; largest difference {diff:.2e}")  # fmt: skip
    if "quantized" in m:
        q, metric = m["quantized"], m["quantized"]["metric"]
        print(f"int8: {metric} {q[f'{metric}_fp32']:.4f} -> {q[f'{metric}_int8']:.4f} "
              f"({q['change']:+.4f}), {q['file']}")  # fmt: skip
    return 0


# ---- serve ----------------------------------------------------------------------------


def cmd_serve(args) -> int:
    from imrec.serve import Access, Limits, serve

    check_number(args.max_upload_mb, "--max-upload-mb", ABOVE_0)
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_files=args.max_files,
        max_pixels=args.max_pixels,
    )
    access = Access(
        rate=args.rate_limit,
        burst=args.burst,
        token_rate=args.token_rate_limit,
        trust_proxy=args.trust_proxy,
        cors_origins=tuple(args.cors_origin or ()),
    )
    serve(args.model, host=args.host, port=args.port, workers=args.workers, backend=args.backend,
          max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, limits=limits,
          token_file=args.token_file, no_auth=args.no_auth, access=access,
          tls_cert=args.tls_cert, tls_key=args.tls_key)  # fmt: skip
    return 0


# ---- explain --------------------------------------------------------------------------


def cmd_explain(args) -> int:
    from imrec.core.preprocess import expand_inputs
    from imrec.explain import explain

    paths = expand_inputs(args.images)
    if not paths:
        raise SystemExit("imrec explain: no images found in " + " ".join(args.images))
    results = explain(args.model, paths, out_dir=args.out, target=args.target, device=args.device)
    for r in results:
        if "error" in r:
            print(f"{r['name']}: ERROR {r['error']}")
            continue
        about = "" if r["target"] == r["label"] else f", explaining {r['target']}"
        files = ", ".join(r["files"].values())
        print(f"{r['name']}: {r['label']} {r['probability']:.3f}{about} -> {files}")
    return 1 if any("error" in r for r in results) else 0


# ---- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imrec",
        description="Train, evaluate, export and serve image classifiers and object detectors.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    _data_commands(sub)
    _models_command(sub)
    _train_command(sub)
    _doctor_command(sub)
    _eval_predict_commands(sub)
    _ship_commands(sub)
    return p


def _data_commands(sub) -> None:
    """``imrec data list|get|show|convert``."""
    data = sub.add_parser("data", help="list, download and look at datasets").add_subparsers(
        dest="data_command", required=True
    )
    data.add_parser("list", help="the registered datasets").set_defaults(func=cmd_data_list)
    g = data.add_parser(
        "get", help="download (or take from IMREC_DATA_MIRROR) and verify a dataset"
    )
    g.add_argument("name")
    g.set_defaults(func=cmd_data_get)
    s = data.add_parser("show", help="a PNG grid of samples per class (detection: with boxes)")
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

    c = data.add_parser(
        "convert", help="convert a detection dataset between COCO JSON and YOLO txt"
    )
    c.add_argument("source", help="a COCO instances JSON, or a YOLO data.yaml or its folder")
    c.add_argument("out", help="output folder")
    c.add_argument("--to", choices=["coco", "yolo"], required=True)
    c.add_argument("--images", help="COCO source: the folder its file_name entries are relative to")
    c.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    c.set_defaults(func=cmd_data_convert)


def _models_command(sub) -> None:
    """``imrec models``."""
    m = sub.add_parser("models", help="the registered models (classifiers and detectors)")
    m.add_argument("--task", choices=["classify", "detect"], help="list only this task's models")
    m.set_defaults(func=cmd_models)


def _train_command(sub) -> None:
    """``imrec train``: its training flags come from the groups of :class:`TrainConfig`."""
    t = sub.add_parser(
        "train",
        help="train a classifier or a detector",
        description="Train a classifier or a detector. A flag left out takes the value of the "
        "preset's recipe for the dataset (see imrec.config.RECIPES), else the default shown.",
    )
    t.add_argument("dataset", nargs="?", help="a name from `imrec data list`, or folder:PATH")
    t.add_argument(
        "--task",
        choices=["classify", "detect"],
        help="default: detect for detection datasets (digits-detect, coco128, coco:, yolo:)",
    )
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a stopped run (no other arguments needed)"
    )
    t.add_argument("--model", help="a name from `imrec models` (default: the preset's)")
    t.add_argument("--preset", choices=["fast", "best"], default="fast")
    t.add_argument("--out", help="run folder (default: runs/<dataset>-N)")
    for title, cls in TRAIN_GROUPS.items():
        config_flags(t.add_argument_group(_GROUP_TITLES[title]), cls)
    t.add_argument(
        "--pretrained",
        metavar="WEIGHTS",
        help="torchvision/timm weights: a local file or a weights name (IMAGENET1K_V1, DEFAULT), "
        "downloaded into the torch hub cache",
    )
    t.add_argument(
        "--weight-norm",
        action="store_true",
        help="weight normalisation on every conv and linear layer",
    )
    t.add_argument(
        "--members",
        type=int,
        metavar="N",
        help="train N networks of the model side by side, each from its own random start, and "
        "answer with the mean of their logits: one run, one bundle (default: the recipe's, "
        "1 but for letters' 2; each member adds its network's compute to training and "
        "inference)",
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
    t.add_argument(
        "--augment-renders",
        action=argparse.BooleanOptionalAction,
        help="whether images drawn afresh every epoch (renders) get the batched augmentation "
        "too; --no-augment-renders augments only the real images (default: the recipe's)",
    )
    t.add_argument("--val-fraction", type=float)
    t.add_argument(
        "--exclude",
        metavar="FILE",
        help="leave out the images an `imrec doctor` exclude list names",
    )
    t.add_argument(
        "--relabel", metavar="FILE", help="relabel the images an `imrec doctor` relabel list names"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _data_flags(t)
    t.set_defaults(func=cmd_train)


def _doctor_command(sub) -> None:
    """``imrec doctor``: the data doctor."""
    d = sub.add_parser(
        "doctor",
        help="find label errors, duplicates, leakage and broken images in a classification dataset",
        description="Examine a classification dataset and write doctor.json, doctor.md and "
        "galleries. Nothing is deleted or moved; --write-exclude/--write-relabel write lists "
        "for imrec train --exclude/--relabel.",
    )
    d.add_argument("dataset", help="a name from `imrec data list`, or folder:PATH")
    d.add_argument(
        "--run", metavar="RUN_DIR", help="a run on this data whose model scores val and test"
    )
    d.add_argument("--out", help="report folder (default: runs/doctor-<dataset>)")
    d.add_argument("--splits", default="train,val,test", help="splits to examine (default all)")
    d.add_argument(
        "--folds", type=int, default=5, help="K of the K-fold cross-validation (default 5)"
    )
    d.add_argument(
        "--epochs", type=int, help="epochs of each fold model (default: the fast recipe's)"
    )
    d.add_argument("--near", type=float, default=0.995,
                   help="lowest correlation of near duplicates at 32 px (default 0.995)")  # fmt: skip
    d.add_argument("--top", type=int, default=100, help="entries listed per section of doctor.md")
    d.add_argument("--size", type=int, help="folder datasets: image side in pixels")
    d.add_argument(
        "--write-exclude", metavar="FILE", help="write the flagged images as an exclude list"
    )
    d.add_argument(
        "--write-relabel", metavar="FILE", help="write the suggested labels as a relabel list"
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_doctor)


def _eval_predict_commands(sub) -> None:
    """``imrec eval`` and ``imrec predict``."""
    c = sub.add_parser(
        "calibrate",
        help="refit a classifier's temperature and unknown threshold (its validation split, "
        "or your own images)",
    )
    c.add_argument("run_dir")
    c.add_argument("--data", help="another dataset whose classes the model knows, e.g. folder:PATH")
    c.add_argument("--accept-rate", type=float, default=0.99, metavar="R",
                   help="share of in-distribution images to accept, in (0, 1] (default 0.99)")  # fmt: skip
    c.add_argument("--split", choices=["test", "all"],
                   help="with --data: its test split or all its images (default all)")  # fmt: skip
    c.add_argument("--score", choices=["msp", "energy", "mahalanobis", "energy+maha"],
                   help="the out-of-distribution score (default: energy+maha up to 100 "
                   "classes, msp above)")  # fmt: skip
    c.set_defaults(func=cmd_calibrate)

    e = sub.add_parser("eval", help="evaluate a run's best checkpoint on the test split")
    e.add_argument("run_dir")
    e.add_argument(
        "--data",
        help="another dataset whose classes the model knows (the same or fewer, e.g. "
        "folder:PATH or chinese-mnist for a hanzi model)",
    )
    e.add_argument(
        "--split",
        choices=["test", "all"],
        default="test",
        help="with --data: its test split (default) or all its images (zero-shot scoring)",
    )
    e.add_argument(
        "--ood",
        metavar="SET[,SET]",
        help="classifiers: how well unknown answers work against other images: datasets "
        "(fashion-mnist, chars74k, folder:PATH, ...) or generated noise, blank, scribbles",
    )
    e.add_argument("--ood-limit", type=int, metavar="N",
                   help="images of each --ood dataset at most (default 10000, at random)")  # fmt: skip
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="top-k labels for image files, folders or globs")
    pr.add_argument("model", help="a run folder, a checkpoint (.safetensors) or an export bundle")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--accept-rate", type=float, metavar="R",
                    help="classifiers: accept this share of in-distribution images, in (0, 1]; "
                    "below the score threshold it sets an image is unknown (default: the "
                    "model's stored threshold, 0.99)")  # fmt: skip
    pr.add_argument("--no-reject", action="store_true",
                    help="classifiers: never answer unknown (blank images are still marked)")  # fmt: skip
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--conf", type=float, default=0.25, help="detectors: lowest box score kept")
    pr.add_argument("--iou", type=float, default=0.5, help="detectors: NMS IoU threshold")
    pr.add_argument("--max-det", type=int, default=100, help="detectors: most boxes per image")
    pr.add_argument("--draw", metavar="DIR", help="detectors: write images with boxes drawn to DIR")
    pr.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime",
                    help="export bundles: which runtime predicts")  # fmt: skip
    pr.set_defaults(func=cmd_predict)


def _ship_commands(sub) -> None:
    """``imrec export``, ``imrec serve`` and ``imrec explain``."""
    ex = sub.add_parser("export", help="write a run's model as a bundle: ONNX, weights, manifest")
    ex.add_argument("run_dir")
    ex.add_argument("--out", metavar="BUNDLE", help="bundle folder (default: RUN_DIR/bundle)")
    ex.add_argument("--quantize", choices=["int8"], help="also write a static int8 model")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset")
    ex.add_argument("--parity-limit", type=int, metavar="N",
                    help="run the parity gate on at most N test images (default: all)")  # fmt: skip
    ex.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="serve a model over HTTP (API, metrics and a web page)")
    sv.add_argument("model", help="an export bundle, a run folder or a checkpoint")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers", type=int, default=1, help="processes, each with the model")
    sv.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime")
    sv.add_argument("--max-batch", type=int, default=32, help="most images per model call")
    sv.add_argument("--max-wait-ms", type=float, default=5, help="how long to wait for a batch")
    sv.add_argument("--max-upload-mb", type=float, default=20, help="largest request body")
    sv.add_argument("--max-files", type=int, default=64, help="most images per request")
    sv.add_argument("--max-pixels", type=int, default=40_000_000, help="most pixels per image")
    sec = sv.add_argument_group("access (see README 'Exposing the service')")
    sec.add_argument("--token-file", metavar="FILE",
                     help="bearer tokens, one per line, required on /v1/*, /metrics and /docs "
                     "(or $IMREC_SERVE_TOKEN; beyond loopback one is generated if none is given)")  # fmt: skip
    sec.add_argument("--no-auth", action="store_true",
                     help="serve beyond loopback without a token (anyone on the network may use it)")  # fmt: skip
    sec.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    sec.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    sec.add_argument("--rate-limit", type=float, default=SERVE_RATE, metavar="R",
                     help=f"requests per second per client address, per worker (default {SERVE_RATE:g}; 0: off)")  # fmt: skip
    sec.add_argument("--burst", type=int, default=SERVE_BURST,
                     help=f"requests a client may make at once (default {SERVE_BURST})")  # fmt: skip
    sec.add_argument(
        "--token-rate-limit",
        type=float,
        default=0.0,
        metavar="R",
        help="requests per second per token (default 0: off)",
    )
    sec.add_argument("--trust-proxy", action="store_true",
                     help="behind a reverse proxy: the client is the last X-Forwarded-For address")  # fmt: skip
    sec.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                     help="let pages of this exact origin call the API (repeatable; default none)")  # fmt: skip
    sv.set_defaults(func=cmd_serve)

    xp = sub.add_parser("explain", help="Grad-CAM and saliency overlays (PNG) for classifiers")
    xp.add_argument("model", help="a run folder, a checkpoint or an export bundle")
    xp.add_argument("images", nargs="+", help="image files, folders or globs")
    xp.add_argument("--out", default="explain", help="folder for the PNGs (default: explain/)")
    xp.add_argument("--target", help="explain this class (name or index), not the prediction")
    xp.add_argument("--device", default="cpu")
    xp.set_defaults(func=cmd_explain)


_GROUP_TITLES = {
    "optim": "optimisation (OptimConfig)",
    "loop": "loop (LoopConfig)",
    "hardware": "hardware (HardwareConfig)",
}


def config_flags(p, cls) -> None:
    """One ``--flag`` per field of the config dataclass ``cls``, from its type, default and
    metadata (see :func:`imrec.config._flag`), and the old names of renamed fields
    (:data:`imrec.config.RENAMED_OPTIONS`) parsed into them. Unset flags stay ``None``: the
    recipe decides."""
    old_names = {new: old for old, new in RENAMED_OPTIONS.items()}
    for f in dataclasses.fields(cls):
        meta, flag = dict(f.metadata), "--" + f.name.replace("_", "-")
        help_text, within = meta.pop("help", ""), meta.pop("within", None)
        if isinstance(f.default, bool):
            # An option that is on by default is turned off with --no-NAME.
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            p.add_argument(flag, action=action, default=None, help=help_text)
            continue
        kind = meta.pop("type", type(f.default))
        shown = f.default not in (None, "") and "default" not in help_text
        said = ([f"default {f.default}"] if shown else []) + ([within.describe()] if within else [])
        said_text = f" ({'; '.join(said)})" if said else ""
        p.add_argument(flag, type=kind, help=(help_text + said_text).strip(), **meta)
        if f.name in old_names:
            old = "--" + old_names[f.name].replace("_", "-")
            p.add_argument(old, dest=f.name, type=kind, help=f"the old name of {flag}", **meta)


def config_values(args: argparse.Namespace, cls) -> dict:
    """The fields of ``cls`` given on the command line (the rest are left to the recipe)."""
    names = (f.name for f in dataclasses.fields(cls))
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size", type=int, help="folder datasets: image side in pixels; detection: training size"
    )
    p.add_argument(
        "--channels", type=int, choices=[1, 3], help="folder datasets: 1 (grey) or 3 (colour)"
    )
    p.add_argument(
        "--domain",
        choices=["handwriting", "objects", "photo"],
        help="folder datasets: picks augmentation and input preparation",
    )


# Commands that load or build their model first, which resumes the collector (heap.settled).
_SETTLE_THEMSELVES = {cmd_train, cmd_eval, cmd_calibrate, cmd_predict, cmd_export, cmd_serve,
                      cmd_explain}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The ``imrec`` program: the command in ``argv`` (default: the process's arguments).

    Run as the process's program (``argv`` None), the garbage collector is paused while the
    command starts up, the shutdown is spared its walk, malloc keeps freed memory for reuse
    (:mod:`imrec.core.heap`) and idle OpenMP threads sleep soon (:mod:`imrec.core.openmp`);
    called with an ``argv`` from Python, the caller's collector, allocator and threads are
    left alone.
    """
    if argv is not None:
        return _main(argv)
    openmp.wait_briefly()  # before torch loads its OpenMP runtime
    heap.keep_freed_memory()
    heap.start()
    try:
        return _main(argv)
    finally:
        heap.leave()


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.func not in _SETTLE_THEMSELVES:
        # Data and doctor commands may run long on many small objects before (or without)
        # a model: the collector goes back on at once for them.
        heap.settled()
    from imrec.core.checkpoint import CheckpointError
    from imrec.core.errors import TrainError
    from imrec.data import DatasetError
    from imrec.deploy.export import ExportError

    try:
        return args.func(args)
    except (
        DatasetError,
        CheckpointError,
        TrainError,
        ExportError,
        FileNotFoundError,
        ValueError,
        KeyError,
    ) as e:
        print(f"imrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = ""
        if args.func is cmd_train:  # other commands have nothing to continue
            how = (
                "; a run that saved an epoch continues with `imrec train --resume RUN_DIR` "
                "(nothing half-written is kept: a dataset being prepared starts again)"
            )
        print(f"imrec: interrupted{how}", file=sys.stderr)
        return 130
