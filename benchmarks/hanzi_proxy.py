"""A 200-character proxy of the hanzi default, to try a change of the renders in minutes.

    python benchmarks/hanzi_proxy.py --work /tmp/proxy [--chars FILE | --confusers RUN]
                                     [--seeds 0,1,2] [--epochs 5] [--pen KEY=VALUE ...]
                                     [--members N] [--train-opt KEY=VALUE ...]
                                     [--data-opt KEY=VALUE ...] [--model-opt KEY=VALUE ...]

The full `imrec train hanzi` takes about an hour on 2 CPU cores; a change of the renders
(``imrec.data.hanzi.PEN``, the hand they imitate) is tried first here: ``hanzi:chars=@FILE``
with the default network and 40 fresh renders per class per epoch, then every Chinese MNIST
image (all 15,000, 100 writers) scored zero-shot in the proxy's own class space
(``imrec.evaluate(RUN, "chinese-mnist", split="all")``, which prepares and softens each
image as ``imrec predict`` does). The proxy's characters: the 15 Chinese MNIST numerals and,
with ``--confusers RUN``, the characters a full hanzi run most often puts in the top 5 of a
numeral it misreads (the hard part of the 3,755-way task for these writers), filled up to
``--size`` with GB2312 level-1 characters in code order; ``--chars FILE`` reads them from a
file instead. The default is ``benchmarks/hanzi_proxy_chars.txt``: the 200 picked by
``--confusers`` from the ``--preset best`` run of 2026-12-02 (BENCHMARKS.md "hanzi"). The
characters used are written to ``WORK/chars.txt``.

The proxy trains about 315 steps (5 epochs of 8,000 renders in batches of 128) where the full
default takes about 14,100, on 200 classes of 3,755: a learning rate found on it does not carry
over (1.2e-2 gained 1.9 / 3.7 points on renders / real writers here, none on the real writers
with ``--train 400 --epochs 3``, six times the steps, and lost 5.9 / 3.9 in full; BENCHMARKS.md
"The peak learning rate 1.2e-2 in full"). Try changes to what the network sees here, not to
how it is optimised.

Seed noise on the real writers is a few points (two seeds of one recipe have differed by
4.4), so each variant is trained with several seeds and judged by the mean; the renders' own
test split is drawn with the variant's pen, so compare the real column across variants.

``--pen`` sets a field of :class:`imrec.data.render.PenStyle` (``width=0.02:0.06``,
``rotate=15``): tuples as ``LO:HI``. ``--train-opt`` sets a training option by its flat name
(``small_epochs=4``, ``lr=0.1``) and ``--data-opt`` a data option (``augment=none``,
``augment_off=rotate,shear``: the batched augmentation on top of the renders), to try a change
of the recipe the same way; ``--model-opt`` an option of the hanzi network (cnn ``size=d``),
the others kept as the recipe has them. The results (per seed and the mean) go to
``WORK/results-TAG.json`` and a markdown table on stdout. The recipe smooths its targets by 0.1
since stop 58: the proxy's results of earlier stops come back with ``--train-opt
label_smoothing=0``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import default_mirror, git_commit, machine, md_table, now  # noqa: E402

KEPT_CHARS = Path(__file__).resolve().parent / "hanzi_proxy_chars.txt"


def pen_style(settings: list[str]):
    """``PEN`` with ``KEY=VALUE`` settings applied (``LO:HI`` for a range)."""
    from imrec.data import hanzi

    fields = {f.name for f in dataclasses.fields(hanzi.PEN)}
    changes: dict = {}
    for setting in settings:
        key, eq, value = setting.partition("=")
        if not eq or key not in fields:
            raise SystemExit(f"--pen {setting!r}: use KEY=VALUE with KEY one of {sorted(fields)}")
        parts = [float(v) for v in value.split(":")]
        changes[key] = tuple(parts) if len(parts) > 1 else parts[0]
    return dataclasses.replace(hanzi.PEN, **changes)


def key_values(settings: list[str], flag: str, example: str) -> dict:
    """``KEY=VALUE`` settings given with ``flag``, each value read as a number when it is one."""
    out: dict = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {setting!r}: use KEY=VALUE ({example})")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def train_options(settings: list[str]) -> dict:
    """``KEY=VALUE`` training options (flat names of :class:`imrec.config.TrainConfig`), each
    value read as a number when it is one."""
    return key_values(settings, "--train-opt", "small_epochs=4")


def model_options(settings: list[str]) -> dict:
    """The hanzi recipe's network options with ``KEY=VALUE`` settings applied (numbers read as
    numbers: ``size=d``, ``width=48``)."""
    from imrec.config import HANZI_NET

    return {**HANZI_NET["options"], **key_values(settings, "--model-opt", "size=d")}


def data_options(settings: list[str]) -> dict:
    """``KEY=VALUE`` data options (fields of :class:`imrec.config.DataConfig`): ``augment``
    takes a name, ``augment_off`` a comma-separated list of augmentation options."""
    from imrec.config import DataConfig

    fields = {f.name for f in dataclasses.fields(DataConfig)}
    out: dict = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or key not in fields:
            raise SystemExit(
                f"--data-opt {setting!r}: use KEY=VALUE with KEY one of {sorted(fields)}"
            )
        out[key] = tuple(v for v in value.split(",") if v) if key == "augment_off" else value
    return out


def confusers(run: Path, size: int) -> str:
    """The 15 numerals, then the characters ``run`` most often ranks in the top 5 of a
    Chinese MNIST image it misreads, then level-1 characters in code order, ``size`` in all."""
    import numpy as np
    import torch

    import imrec
    from imrec.classify.evaluate import as_the_model_reads
    from imrec.core.checkpoint import read_checkpoint_meta
    from imrec.data import load_dataset
    from imrec.data.datasets import CHINESE_CLASSES

    model = imrec.load(run, backend="torch")
    meta = read_checkpoint_meta(run)
    data = load_dataset("chinese-mnist", size=model.size[0])
    counts: dict[str, int] = {}
    for part in ("train", "val", "test"):
        split = as_the_model_reads(data, getattr(data, part), meta)
        # the model's runtime batches the images; a ranking needs no calibration
        top5 = torch.topk(torch.from_numpy(model.logits(split.images)), 5, 1).indices.numpy()
        for row, label in zip(top5, np.asarray(split.labels), strict=True):
            truth = CHINESE_CLASSES[int(label)]
            names = [model.classes[int(k)] for k in row]
            if names[0] != truth:
                for name in names:
                    if name != truth and name not in CHINESE_CLASSES:
                        counts[name] = counts.get(name, 0) + 1
    return filled(CHINESE_CLASSES + sorted(counts, key=lambda c: -counts[c]), size)


def filled(chars: list[str], size: int) -> str:
    """The first ``size`` of ``chars``, filled up to ``size`` with GB2312 level-1 characters in
    code order."""
    from imrec.data.hanzi import gb2312

    chars = chars[:size]
    return "".join(chars + [c for c in gb2312(1) if c not in chars][: size - len(chars)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--chars", help="a file of the proxy's characters")
    parser.add_argument("--confusers", help="a full hanzi run whose confusions pick them")
    parser.add_argument("--size", type=int, default=200, help="characters in the proxy")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train", type=int, default=40, help="renders per class per epoch")
    parser.add_argument("--pen", action="append", default=[], help="PenStyle KEY=VALUE")
    parser.add_argument("--members", type=int, default=1, help="networks trained as one (2-8)")
    parser.add_argument(
        "--train-opt",
        action="append",
        default=[],
        help="a training option KEY=VALUE by its flat name (small_epochs=4)",
    )
    parser.add_argument(
        "--data-opt",
        action="append",
        default=[],
        help="a data option KEY=VALUE (augment=none, augment_off=rotate,shear)",
    )
    parser.add_argument(
        "--model-opt",
        action="append",
        default=[],
        help="an option of the hanzi network KEY=VALUE (size=d, width=48)",
    )
    parser.add_argument("--tag", default="", help="a name for this variant in the table")
    parser.add_argument(
        "--real-split", default="all", help="Chinese MNIST images scored: all (15,000) or test"
    )
    parser.add_argument(
        "--px", type=int, help="the images' side (default: the hanzi dataset's, 48 px)"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("IMREC_DATA_MIRROR", str(default_mirror()))
    import imrec
    from imrec.data import hanzi

    args.work.mkdir(parents=True, exist_ok=True)
    chars_file = args.work / "chars.txt"
    if args.chars:
        chars = Path(args.chars).read_text(encoding="utf-8").strip()
    elif args.confusers:
        chars = confusers(Path(args.confusers), args.size)
    elif args.size == 200 and KEPT_CHARS.is_file():
        chars = KEPT_CHARS.read_text(encoding="utf-8").strip()
    else:
        from imrec.data.datasets import CHINESE_CLASSES

        chars = filled(CHINESE_CLASSES, args.size)
    chars_file.write_text(chars, encoding="utf-8")
    hanzi.PEN = pen_style(args.pen)  # read by every Renderer made from here on
    train_opts = train_options(args.train_opt)
    data_opts = data_options(args.data_opt)
    model_opts = model_options(args.model_opt)
    changes = args.pen + args.train_opt + args.data_opt + args.model_opt
    tag = args.tag or (",".join(changes) or "default")
    name = tag.replace("/", "_")  # for file names

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        out = args.work / f"{name}-s{seed}"
        t0 = time.perf_counter()
        report = imrec.fit(
            f"hanzi:chars=@{chars_file},train={args.train},val=2,test=4"
            + (f",size={args.px}" if args.px else ""),
            out=out,
            train={"epochs": args.epochs, "seed": seed, **train_opts},
            data=data_opts,
            # members checked by the config: 0 or 9 refused
            model={"name": "cnn", "options": model_opts, "members": args.members},
            progress=False,
        )
        seconds = time.perf_counter() - t0
        real = imrec.evaluate(out, "chinese-mnist", split=args.real_split)
        rows.append(
            {
                "seed": seed,
                "renders_top1": report["test"]["accuracy"],
                "real_top1": real["test"]["accuracy"],
                "real_top5": real["test"].get("top5"),
                "real_n": real["test"].get("n"),
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("renders_top1", "real_top1")}
    result = {
        "tag": tag,
        "pen": dataclasses.asdict(hanzi.PEN),
        "chars": len(chars),
        "epochs": args.epochs,
        "members": args.members,
        "train_opts": train_opts,
        "data_opts": data_opts,
        "model_opts": model_opts,
        "train_per_class": args.train,
        "real_split": args.real_split,
        "px": report["input"]["size"][0],
        "rows": rows,
        "mean": mean,
        "commit": git_commit(),
        "date": now(),
        "machine": machine(),
    }
    (args.work / f"results-{name}.json").write_text(json.dumps(result, indent=1))
    table = [[r["seed"], f"{100 * r['renders_top1']:.2f}", f"{100 * r['real_top1']:.2f}",
              r["seconds"]] for r in rows]  # fmt: skip
    table.append(
        ["mean", f"{100 * mean['renders_top1']:.2f}", f"{100 * mean['real_top1']:.2f}", ""]
    )
    print(f"\n{tag}: {len(chars)} characters, {args.epochs} epochs")
    print("\n".join(md_table(["seed", "renders top-1 %", "real top-1 %", "fit s"], table)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
