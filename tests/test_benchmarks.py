"""The benchmark scripts that train through imrec's internals still run (a change of the
trainer's shape once left benchmarks/time_to_accuracy.py subclassing the abstract engine)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench(name: str, monkeypatch, tmp_path: Path):
    """The benchmark script ``name`` imported from benchmarks/, and a BENCHMARKS.md stand-in
    holding text the script must keep."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nkept text\n")
    return importlib.import_module(name), md


def test_time_to_accuracy_smoke_plan_trains_scores_and_writes_its_section(
    tmp_path, monkeypatch, mirror
):
    tta, md = _bench("time_to_accuracy", monkeypatch, tmp_path)
    js = tmp_path / "t.json"
    assert tta.main(["--plan", "smoke", "--json", str(js), "--md", str(md)]) == 0
    result = json.loads(js.read_text())
    (config,) = result["configs"]
    (run,) = config["runs"]
    # one epoch of batch 1024 on real MNIST, scored on the test split after the epoch
    assert config["name"] == "default" and run["epochs"] == 1
    assert 0.95 < run["test_accuracy"][0] <= 1.0 and run["epoch_seconds"][0] > 0
    text = md.read_text()
    assert "kept text" in text
    assert text.count("<!-- time_to_accuracy:smoke:start -->") == 1
    assert f"| default | 1 | {run['test_accuracy'][0]:.4f} |" in text


def test_render_speed_smoke_run_measures_renders_and_the_step(tmp_path, monkeypatch, mirror):
    bench, md = _bench("render_speed", monkeypatch, tmp_path)
    argv = ["--rounds", "1", "--chars", "4", "--draws", "1", "--steps", "1"]
    # The renders, the step and the whole-process runs both ways (the default render workers
    # and one at normal priority) in one call; 40 renders per class (320 training images a
    # run) learn the 4 characters well above chance (50% where chance is 25%).
    whole = ["--train-chars", "4", "--train-per-class", "40", "--train-rounds", "1"]
    assert bench.main([*argv, *whole, "--md", str(md)]) == 0
    text = md.read_text()
    assert "kept text" in text and text.count("<!-- render_speed:start -->") == 1
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "|" in line}
    assert "strokes" in rows and any(k.startswith("training step") for k in rows)
    # every median is a positive rate, and the step's ratio to itself is 1.00
    renders = [k for k in rows if k in ("strokes", "fonts", "strokes+fonts")]
    for key in [*renders, next(k for k in rows if k.startswith("training step"))]:
        cells = [c.strip() for c in rows[key].strip("|").split("|")]
        assert float(cells[2].strip("*").replace(",", "")) > 0
    assert rows[next(k for k in rows if k.startswith("training step"))].endswith("| 1.00 |")
    assert "320 training images each" in text
    ways = [
        line for line in text.splitlines() if line.startswith(("| `(default)`", "| `--workers"))
    ]
    assert len(ways) == 2 and "--worker-priority normal" in ways[1]
    for line in ways:  # a positive rate, and the 4 characters learnt a little either way
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[2].strip("*").replace(",", "")) > 0 and float(cells[5][:-1]) > 25
    assert "x** the training rate of one worker at normal priority" in text


def test_prepare_speed_smoke_run_loads_a_folder_both_ways_to_the_same_images(
    tmp_path, monkeypatch, mirror
):
    bench, md = _bench("prepare_speed", monkeypatch, tmp_path)
    argv = ["--work", str(tmp_path / "w"), "--cases", "folder-handwriting", "--writers", "2"]
    assert bench.main([*argv, "--rounds", "1", "--md", str(md)]) == 0
    text = md.read_text()
    assert "kept text" in text and text.count("<!-- prepare_speed:start -->") == 1
    (row,) = [line for line in text.splitlines() if line.startswith("| `folder-handwriting`")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # 2 writers' 150 files each, read as handwriting, the same images both ways
    assert cells[0] == "`folder-handwriting` (handwriting)" and cells[1] == "300"
    assert float(cells[2]) > 0 and float(cells[3]) > 0 and cells[-1] == "yes"


def test_shared_cache_smoke_run_times_loads_alone_and_together(tmp_path, monkeypatch, mirror):
    bench, md = _bench("shared_cache", monkeypatch, tmp_path)
    assert bench.main(["--dataset", "digits", "--rounds", "1", "--md", str(md)]) == 0
    text = md.read_text()
    assert "kept text" in text and text.count("<!-- shared_cache:start -->") == 1
    rows = [line for line in text.splitlines() if line.startswith(("| 1 alone", "| 2 at once"))]
    assert len(rows) == 2
    for row in rows:  # a positive time; the lone process never waits, of two at most one
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0 and int(cells[3]) <= (0 if "alone" in row else 1)
    assert "1,797 images" in text and "2 at once / 1 alone: **" in text
    with pytest.raises(SystemExit, match="2 or more"):
        bench.main(["--together", "1", "--md", str(md)])


def test_hanzi_shapes_compares_real_and_rendered_characters(tmp_path, monkeypatch, mirror):
    bench, md = _bench("hanzi_shapes", monkeypatch, tmp_path)
    argv = ["--per-class", "4", "--real", "600", "--aspect=-0.3,-0.3", "--md", str(md)]
    assert bench.main(argv) == 0
    text = md.read_text()
    assert "kept text" in text and text.count("<!-- hanzi_shapes:start -->") == 1
    rows = [line for line in text.splitlines() if line.startswith("| 零 | strokes |")]
    assert len(rows) == 1
    # each cell is "real / rendered", both positive
    for cell in rows[0].strip("|").split("|")[2:]:
        real, rendered = (float(v) for v in cell.split("/"))
        assert real > 0 and rendered > 0
    # every render narrowed by exp(-0.6): the box of 零, square in the stroke data, is narrow
    box = float(rows[0].strip("|").split("|")[2].split("/")[1])
    assert box < 0.85


def test_hanzi_held_out_fonts_leave_out_the_fonts_training_drew_from(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("hanzi")
    kai, ming = tmp_path / "kai", tmp_path / "ming"
    for folder, names in ((kai, ["gkai00mp.ttf", "ukai.ttc"]), (ming, ["uming.ttc", "x.txt"])):
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(b"font")
    monkeypatch.setattr(bench, "HELD_OUT_FONTS", (str(kai), str(ming)))
    note = "by strokes+fonts (fonts: AR PL UKai CN Book (ukai.ttc)) (training renders ...)"
    got = bench.held_out_fonts(tmp_path / "w", None, note)
    assert sorted(p.name for p in got.iterdir()) == ["gkai00mp.ttf", "uming.ttc"]
    # a machine where training drew from all three fonts has none left to hold out
    note = "fonts: K (gkai00mp.ttf), U (ukai.ttc), M (uming.ttc)"
    assert bench.held_out_fonts(tmp_path / "w", None, note) is None
    # a folder given by hand is refused when it holds a font training drew from
    with pytest.raises(SystemExit, match=r"training drew from \['gkai00mp.ttf'\]"):
        bench.held_out_fonts(tmp_path / "w", str(kai), "fonts: K (gkai00mp.ttf)")
    assert bench.held_out_fonts(tmp_path / "w", str(ming), "fonts: K (gkai00mp.ttf)") == ming


def test_hanzi_proxy_trains_with_the_pen_asked_for_and_scores_real_writers(
    tmp_path, monkeypatch, mirror
):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("hanzi_proxy")
    from imrec.data import hanzi

    monkeypatch.setattr(hanzi, "PEN", hanzi.PEN)  # main() replaces it: restored after the test
    style = bench.pen_style(["width=0.01:0.02", "rotate=3"])
    assert style.width == (0.01, 0.02) and style.rotate == 3.0 and style.shear == hanzi.PEN.shear
    with pytest.raises(SystemExit, match="KEY one of"):
        bench.pen_style(["nib=3"])
    # a Renderer made with another pen draws other images than the default's
    chars = "一二三"
    strokes = hanzi.load_strokes(chars)
    default = hanzi.Renderer(chars, strokes=strokes).draw(0, [0, 1, 2], 32)
    monkeypatch.setattr(hanzi, "PEN", style)
    assert not np.array_equal(
        hanzi.Renderer(chars, strokes=strokes).draw(0, [0, 1, 2], 32), default
    )

    argv = [
        "--work",
        str(tmp_path),
        "--size",
        "20",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--train",
        "4",
    ]
    # at 32 px, not the hanzi dataset's 48: the 3,000 real images scored by two members cost less
    more = ["--real-split", "test", "--pen", "rotate=3", "--tag", "t", "--members", "2"]
    more += ["--px", "32"]
    more += ["--train-opt", "small_scale=0.5", "--train-opt", "label_smoothing=0.05"]
    more += ["--data-opt", "augment_off=rotate,shear"]
    with pytest.raises(SystemExit, match="use KEY=VALUE"):
        bench.train_options(["small_scale"])
    with pytest.raises(SystemExit, match="KEY one of"):
        bench.data_options(["augmnt=none"])
    assert bench.main([*argv, *more]) == 0
    result = json.loads((tmp_path / "results-t.json").read_text())
    assert result["pen"]["rotate"] == 3.0 and result["chars"] == 20
    assert result["members"] == 2  # the proxy's run is an ensemble, as asked
    assert result["px"] == 32
    report = json.loads((tmp_path / "t-s0" / "report.json").read_text())
    assert report["members"] == 2
    # the training options asked for reach the run, read as numbers
    assert result["train_opts"] == {"small_scale": 0.5, "label_smoothing": 0.05}
    assert report["config"]["loop"]["small_scale"] == 0.5
    assert report["config"]["optim"]["label_smoothing"] == 0.05
    # so do the data options: the batched augmentation without its rotation and shear
    assert result["data_opts"] == {"augment_off": ["rotate", "shear"]}
    assert report["config"]["data"]["augment_off"] == ["rotate", "shear"]
    assert (tmp_path / "chars.txt").read_text(encoding="utf-8").startswith("零一二三")
    (row,) = result["rows"]
    # the Chinese MNIST test writers' 3,000 images scored in the proxy's 20-way space
    assert row["real_n"] == 3000 and 0 <= row["real_top1"] <= row["real_top5"] <= 1
    assert 0 <= row["renders_top1"] <= 1 and row["seconds"] > 0


def test_ruled_paper_photographs_a_test_split_and_scores_it_both_ways(
    tmp_path, monkeypatch, hanzi_run
):
    from conftest import HANZI_RUN_DATA

    bench, md = _bench("ruled_paper", monkeypatch, tmp_path)
    argv = ["--work", str(tmp_path / "w"), "--run", str(hanzi_run), "--data", HANZI_RUN_DATA]
    argv += "--label tiny --limit 24 --px 96 --fill 0.6 --write --md".split() + [str(md)]
    assert bench.main(argv) == 0
    # the photos are files, one per test image and paper, named by their class
    for paper in ("plain", "ruled", "squared", "desk", "shadow"):
        files = sorted((tmp_path / "w").glob(f"*/{paper}/*.png"))
        assert len(files) == 24 and all(
            f.stem.split("_")[1] in "永中国人大小山水火木" for f in files
        )
    result = json.loads((tmp_path / "w" / "results.json").read_text())["tiny @ 0.6"]
    for ways in result["scores"].values():
        for way in ("off", "on"):
            assert ways[way]["n"] == 24 and 0 <= ways[way]["top1"] <= ways[way]["top5"] <= 1
    # plain paper has no lines, desk or shadow to take out: both ways read it alike
    assert result["scores"]["plain"]["off"]["top5"] == result["scores"]["plain"]["on"]["top5"]
    text = md.read_text()
    assert "kept text" in text and text.count("<!-- ruled-paper:start -->") == 1
    assert (
        sum(line.startswith("| tiny | on a page (60% of its side) |") for line in text.splitlines())
        == 5
    )


def test_note_on_desk_photographs_sheets_on_a_desk_and_scores_them_three_ways(
    tmp_path, monkeypatch, hanzi_run
):
    from conftest import HANZI_RUN_DATA

    bench, md = _bench("note_on_desk", monkeypatch, tmp_path)
    argv = ["--work", str(tmp_path / "w"), "--run", str(hanzi_run), "--data", HANZI_RUN_DATA]
    assert bench.main([*argv, "--label", "tiny", "--limit", "12", "--write", "--md", str(md)]) == 0
    for kind in ("sheet", "note"):
        files = sorted((tmp_path / "w").glob(f"*/{kind}/*.png"))
        assert len(files) == 12 and all(
            f.stem.split("_")[1] in "永中国人大小山水火木" for f in files
        )
    result = json.loads((tmp_path / "w" / "results.json").read_text())["tiny"]
    for way in ("sheet", "off", "on"):
        assert result[way]["n"] == 12 and 0 <= result[way]["top1"] <= result[way]["top5"] <= 1
    text = md.read_text()
    assert "kept text" in text and text.count("<!-- note-on-desk:start -->") == 1
    assert sum(line.startswith("| tiny | 12 |") for line in text.splitlines()) == 1


def test_hanzi_pens_draws_dark_on_white_files_and_scores_each_run_on_the_same(
    tmp_path, monkeypatch, hanzi_run, capsys
):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    pens = importlib.import_module("hanzi_pens")
    from PIL import Image

    from imrec.core.checkpoint import read_checkpoint_meta

    classes = read_checkpoint_meta(hanzi_run)["classes"]
    work = tmp_path / "w"
    assert pens.main(["--work", str(work), "--n", "20", str(hanzi_run), str(hanzi_run)]) == 0
    for pen in pens.PENS:
        files = sorted((work / "files" / pen).glob("*.png"))
        assert len(files) == 20
        assert {chr(int(f.stem.split("_")[1], 16)) for f in files} <= set(classes)
        with Image.open(files[0]) as img:
            a = np.asarray(img)
        assert img.size == (pens.SIDE, pens.SIDE) and a.max() == 255 and a.min() < 64
        assert (a > 128).mean() > 0.6  # dark ink on a white page
    results = json.loads((work / "results.json").read_text())
    (scored,) = results["runs"].values()  # one run named twice: one entry
    for pen in pens.PENS:
        assert scored[pen]["n"] == 20 and scored[pen]["top1"] <= scored[pen]["top5"]
    # the 10-character model reads crisp drawings of its own characters far above chance (10%)
    assert scored["renderer"]["top5"] >= 0.9 and scored["renderer"]["top1"] >= 0.5
    assert f"| {hanzi_run} |" in capsys.readouterr().out
