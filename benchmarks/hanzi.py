"""Chinese handwriting at real vocabulary: the goals of BENCHMARKS.md "hanzi" (issue 13).

    python benchmarks/hanzi.py --work /tmp/hanzi [--run RUN | --train-args=ARGS] [--held-out-fonts DIR]
                               [--finetune-epochs 8] [--finetune-data chinese-mnist:small=1]
                               [--finetune-args '--label-smoothing 0.05 --distill 1']
                               [--skip held-out,zero-shot,finetune,export]

Every step is a whole ``imrec`` process, as a user runs it:

1. ``imrec train hanzi`` (the default run: 3,755 GB2312 level-1 characters) unless ``--run``
   names one already trained; its wall time (cold, rendering included) and the synthetic test
   top-1/top-5 of its report (renders drawn with seeds never used in training).
2. Held-out style: ``imrec eval RUN --data hanzi:renderers=fonts,fonts=DIR`` with fonts that
   training never saw (default: the Arphic GB Kai and Ming fonts of Debian's
   fonts-arphic-gkai00mp and fonts-arphic-uming, when installed), leaving out any font the
   run's split note says its renders were drawn from (fontconfig gives training every zh-cn
   font installed, so a machine with these fonts trains on them).
3. Real handwriting, zero-shot: ``imrec eval RUN --data chinese-mnist --split all`` (all 15,000
   images of 100 writers, scored in the full 3,755-way space), and the same 15,000 images as the
   JPEG files they are published as, through ``imrec predict RUN DIR --json --top-k 5`` (what a
   user's files go through: each file straight into the model's form; ``eval`` reads the same
   images, so the two agree: a check that they do).
4. Fine-tuning that keeps every class: ``imrec train chinese-mnist:small=1 --init RUN
   --keep-classes --rehearse 32 --label-smoothing 0.05 --distill 1`` (the README's recipe:
   ``--rehearse 32`` and the smoothing since stop 49, ``--distill 1`` since stop 62;
   ``--finetune-data``: the training writers' files, each also
   seen written small), then its Chinese MNIST test accuracy (test writers), the test writers'
   files written small (each scaled to 60% and 40% of its side on its own paper, through
   ``imrec predict``), and ``imrec eval FT --data hanzi`` (the synthetic test after it).
5. ``imrec export RUN --quantize int8`` (parity gate), the int8 accuracy, and one character's
   latency through ONNX Runtime (``benchmarks/inference_latency.py``'s way: p50 of 500 calls).

Results go to ``<work>/results.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from _bench import imrec_cli as imrec
from _bench import predict_top5

HELD_OUT_FONTS = ("/usr/share/fonts/truetype/arphic-gkai00mp", "/usr/share/fonts/truetype/arphic")


def scores(report: dict) -> dict:
    test = report["test"]
    return {"top1": test["accuracy"], "top5": test.get("top5"), "n": test.get("n")}


def held_out_fonts(work: Path, given: str | None, seen: str = "") -> Path | None:
    """A folder with fonts training never saw: ``given``, or links to the Debian fonts of
    :data:`HELD_OUT_FONTS`. ``seen`` is the run's split note, which names the font files its
    renders were drawn from (fontconfig's zh-cn fonts on the machine that trained it): a font
    named there is left out, and a ``given`` folder holding one is refused, so that a machine
    with more fonts installed does not score the model on fonts it trained on."""

    def drawn_from(font: Path) -> bool:  # the split note names each font file in brackets
        return f"({font.name})" in seen

    if given:
        trained = [f.name for f in sorted(Path(given).glob("*")) if drawn_from(f)]
        if trained:
            raise SystemExit(f"--held-out-fonts {given}: training drew from {trained}")
        return Path(given)
    folder = work / "held-out-fonts"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for root in map(Path, HELD_OUT_FONTS):
        for font in sorted(root.glob("*")) if root.is_dir() else []:
            if font.suffix.lower() in (".ttf", ".ttc") and not drawn_from(font):
                (folder / font.name).symlink_to(font)
    if not any(folder.iterdir()):
        print(
            "hanzi: no held-out fonts: the run trained on every font of "
            f"{', '.join(HELD_OUT_FONTS)} installed here (give --held-out-fonts DIR)",
            file=sys.stderr,
        )
        return None
    return folder


def chinese_mnist_files(work: Path) -> Path:
    """All Chinese MNIST images as their published JPEG files (``input_<writer>_<sample>_<code>
    .jpg``), taken from the tarball imrec fetched (or the mirror), in ``work/chinese-mnist-files``."""
    from imrec.data.datasets import _CHINESE_NAME, _fetch_chinese, _tar_members

    folder = work / "chinese-mnist-files"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == 15000:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tarball, _ = _fetch_chinese()
    for (writer, sample, code), data in _tar_members(tarball, _CHINESE_NAME):
        (folder / f"input_{writer}_{sample}_{code}.jpg").write_bytes(data)
    return folder


def predict_files(run: Path, folder: Path, writers: set[int] | None = None) -> dict:
    """top-1/top-5 of ``imrec predict RUN FOLDER --json --top-k 5`` on Chinese MNIST files
    (the true class is the file name's code), over ``writers`` only when given."""
    from imrec.data.datasets import _CHINESE_NAME, CHINESE_CLASSES

    def numbers(name: str) -> tuple[int, int, int]:  # writer, sample, code
        return tuple(int(g) for g in _CHINESE_NAME.search(name).groups())

    if writers is not None:
        files = [f for f in sorted(folder.glob("*.jpg")) if numbers(f.name)[0] in writers]
        folder = folder.parent / f"{folder.name}-subset"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f.resolve())
    return predict_top5(run, folder, lambda name: CHINESE_CLASSES[numbers(name)[2] - 1])


def written_small(folder: Path, share: float, writers: set[int]) -> Path:
    """The test writers' files of ``folder`` as if written smaller
    (:func:`imrec.data.paper.written_smaller`: each scaled to ``share`` of its side on its own
    paper), saved as JPEG (quality 95, under the file's own name) in ``folder``'s sibling
    ``<name>-<share in %>``."""
    from PIL import Image

    from imrec.data.datasets import _CHINESE_NAME
    from imrec.data.paper import written_smaller

    out = folder.parent / f"{folder.name}-{round(share * 100)}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for f in sorted(folder.glob("*.jpg")):
        if int(_CHINESE_NAME.search(f.name).group(1)) not in writers:
            continue
        with Image.open(f) as img:
            written_smaller(img.convert("L"), share).save(out / f.name, quality=95)
    return out


def latency(bundle: Path, model: str) -> dict:
    """p50/p99 ms of one prepared character through ``imrec.load(bundle)`` (ONNX Runtime)."""
    code = f"""
import json, time, numpy as np, torch, imrec
m = imrec.load({str(bundle)!r}, precision={model!r})
x = torch.zeros((1, m.channels, *m.size), dtype=torch.uint8)
for _ in range(100): m.probabilities(x)
t = []
for _ in range(500):
    t0 = time.perf_counter(); m.probabilities(x); t.append(time.perf_counter() - t0)
print(json.dumps({{"p50_ms": 1e3 * float(np.median(t)), "p99_ms": 1e3 * float(np.percentile(t, 99))}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--run", type=Path, help="an `imrec train hanzi` run (default: train one)")
    ap.add_argument("--held-out-fonts", help="a folder of CJK fonts training never saw")
    ap.add_argument("--finetune-epochs", type=int, default=8)
    ap.add_argument("--finetune-lr", default="1e-3")
    ap.add_argument(
        "--finetune-data",
        default="chinese-mnist:small=1",
        help="the Chinese MNIST dataset to fine-tune on (chinese-mnist: the files alone)",
    )
    ap.add_argument("--rehearse", default="32", help="renders per class mixed into fine-tuning")
    ap.add_argument(
        "--finetune-args",
        default="--label-smoothing 0.05 --distill 1",
        help="more `imrec train` options for the fine-tuning, e.g. '--label-smoothing 0.05'",
    )
    ap.add_argument(
        "--train-args",
        default="",
        help="more `imrec train hanzi` options for the run it trains, after an equals sign: "
        "--train-args=--no-augment",
    )
    ap.add_argument(
        "--skip", default="", help="comma-separated: held-out, zero-shot, finetune, export"
    )
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results: dict = (
        json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    )
    run = args.run or work / "hanzi"

    def save() -> None:  # after every step: a step cut off by a time limit keeps the ones before
        (work / "results.json").write_text(json.dumps(results, indent=2, default=str))

    if args.run is None:
        more = shlex.split(args.train_args)
        wall, _ = imrec("train", "hanzi", "--out", str(run), "--quiet", *more)
        results["train_wall_seconds"] = round(wall, 1)
        results["train_args"] = more
    report = json.loads((run / "report.json").read_text())
    results["run"] = str(run)
    results["train_seconds"] = report.get("train_seconds")
    results["synthetic"] = scores(report)
    save()

    seen = str(report.get("split", ""))
    fonts = None if "held-out" in skip else held_out_fonts(work, args.held_out_fonts, seen)
    if fonts is not None:
        _, out = imrec("eval", str(run), "--data", f"hanzi:renderers=fonts,fonts={fonts}")
        # the folder `imrec eval` says it wrote (a run scored with other fonts before has more)
        (line,) = [ln for ln in out.splitlines() if ln.startswith("report: ")]
        ev = Path(line.removeprefix("report: ")).with_name("report.json")
        results["held_out_fonts"] = {**scores(json.loads(ev.read_text())), "fonts": str(fonts)}
        save()

    files = chinese_mnist_files(work)
    if "zero-shot" not in skip:
        imrec("eval", str(run), "--data", "chinese-mnist", "--split", "all")
        results["chinese_mnist_zero_shot"] = scores(
            json.loads((run / "eval-chinese-mnist" / "report.json").read_text())
        )
        results["chinese_mnist_files_predict"] = predict_files(run, files)
        save()

    if "finetune" not in skip:
        ft = work / "finetuned"
        shutil.rmtree(ft, ignore_errors=True)
        wall, _ = imrec(
            "train", args.finetune_data, "--init", str(run), "--keep-classes",
            "--rehearse", args.rehearse, "--epochs", str(args.finetune_epochs),
            "--lr", args.finetune_lr, *shlex.split(args.finetune_args), "--out", str(ft),
            "--quiet",
        )  # fmt: skip
        results["finetuned"] = {
            "chinese_mnist_test": scores(json.loads((ft / "report.json").read_text())),
            "wall_seconds": round(wall, 1),
        }
        from imrec.data import load_dataset

        test_writers = {int(w) for w in load_dataset("chinese-mnist").test.groups.tolist()}
        results["finetuned"]["chinese_mnist_test_files_predict"] = predict_files(
            ft, files, test_writers
        )
        results["finetuned"]["data"] = args.finetune_data
        results["finetuned"]["args"] = args.finetune_args
        save()
        results["finetuned"]["written_small"] = {
            f"{share:.0%}": predict_files(ft, written_small(files, share, test_writers))
            for share in (0.6, 0.4)
        }
        imrec("eval", str(ft), "--data", "hanzi")
        (ev,) = ft.glob("eval-hanzi*/report.json")
        results["finetuned"]["synthetic"] = scores(json.loads(ev.read_text()))

    if "export" not in skip:
        bundle = work / "bundle"
        shutil.rmtree(bundle, ignore_errors=True)
        imrec(
            "export", str(run), "--out", str(bundle), "--quantize", "int8", "--parity-limit", "2000"
        )
        manifest = json.loads((bundle / "manifest.json").read_text())
        results["export"] = {
            "manifest": {k: manifest.get(k) for k in ("parity", "quantized", "files")},
            "onnx_mib": round((bundle / "model.onnx").stat().st_size / 2**20, 2),
            "latency_fp32": latency(bundle, "fp32"),
            "latency_int8": latency(bundle, "int8"),
        }
    save()
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
