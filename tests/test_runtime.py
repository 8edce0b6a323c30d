"""imrec.load: bundles and runs, both backends, every input form, int8, errors, CLI predict."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imrec
from imrec.classify.predict import Predictor
from imrec.cli import main
from imrec.core.checkpoint import CheckpointError
from imrec.deploy.export import ExportError, export_bundle
from imrec.models.detectors import TinyDet, create_detector


@pytest.fixture(scope="module")
def bundle(digits_run, tmp_path_factory) -> Path:
    return export_bundle(digits_run, tmp_path_factory.mktemp("bundles") / "b", quantize="int8")


@pytest.fixture(scope="module")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits test split: prepared uint8 (N, 1, 8, 8) images and their labels."""
    data = imrec.load_dataset("digits")
    return data.test.images, data.test.labels


@pytest.fixture(scope="module")
def image_files(test_images, tmp_path_factory) -> list[Path]:
    """Six test images written as 8x8 PNG files (already in the training data's form)."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(6):
        path = folder / f"digit{i}.png"
        Image.fromarray(test_images[0][i, 0].numpy()).save(path)
        paths.append(path)
    return paths


def _top1(results: list[dict]) -> list[str]:
    return [r["top"][0]["label"] for r in results]


# ---- both backends, bundle and run --------------------------------------------------------


def test_all_ways_to_load_give_the_same_probabilities(digits_run, bundle, test_images):
    images, labels = test_images
    models = {
        "bundle-ort": imrec.load(bundle),
        "bundle-torch": imrec.load(bundle, backend="torch"),
        "run-ort": imrec.load(digits_run),
        "run-torch": imrec.load(digits_run, backend="torch"),
        "checkpoint-ort": imrec.load(digits_run / "best.safetensors"),
    }
    ref = Predictor(digits_run).probabilities(images).numpy()  # what `imrec predict` computes
    for name, model in models.items():
        probs = model.probabilities(images)
        assert probs.shape == (len(images), 10), name
        assert (probs.argmax(1) == ref.argmax(1)).all(), name
        assert np.abs(probs - ref).max() < 1e-4, name
    accuracy = float((ref.argmax(1) == labels.numpy()).mean())
    report = json.loads((digits_run / "report.json").read_text())
    assert accuracy == pytest.approx(report["test"]["accuracy"], abs=1e-6)


def test_files_predict_like_imrec_predict(digits_run, bundle, image_files):
    ref = Predictor(digits_run).predict(image_files, top_k=3)
    for backend in ("onnxruntime", "torch"):
        got = imrec.load(bundle, backend=backend).predict(image_files, top_k=3)
        assert [r["input"] for r in got] == [str(p) for p in image_files]
        assert _top1(got) == _top1(ref)
        for g, r in zip(got, ref, strict=True):
            assert len(g["top"]) == 3
            for a, b in zip(g["top"], r["top"], strict=True):
                assert a["label"] == b["label"]
                assert abs(a["probability"] - b["probability"]) < 1e-4


def _same_answers(got: list[dict], ref: list[dict]) -> None:
    """The same inputs, errors, labels and decisions; numbers equal up to the float rounding
    that another batch size brings."""
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.keys() == r.keys() and g["input"] == r["input"]
        if "error" in r:
            assert g["error"] == r["error"]
            continue
        assert [t["label"] for t in g["top"]] == [t["label"] for t in r["top"]]
        for a, b in zip(g["top"], r["top"], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        # The score (a distance of order 1) sums more products than a probability: other batch
        # sizes moved it by 1.2e-5 on an AVX2 CPU (1e-5 relative), so it is compared relatively.
        assert g["score"] == pytest.approx(r["score"], rel=1e-4, abs=1e-5)
        assert (g["unknown"], g["blank"]) == (r["unknown"], r["blank"])


def test_a_long_list_is_predicted_in_windows_on_every_core_with_the_same_answers(
    digits_run, bundle, test_images, tmp_path, monkeypatch
):
    """A folder of any size: inputs prepared a window at a time (in worker processes once
    there are a few hundred), the model run on bounded batches; answers, order and errors
    the same as one prepared in this process in one go."""
    from imrec.classify import predict as predict_module
    from imrec.core.parallel import MIN_PROCESS_ITEMS, PROCESSES_ENV
    from imrec.deploy import runtime

    images = test_images[0]
    files = []
    for i in range(MIN_PROCESS_ITEMS + 40):
        path = tmp_path / f"d{i:03d}.png"
        Image.fromarray(images[i % len(images), 0].numpy()).save(path)
        files.append(path)
    files[7] = tmp_path / "missing.png"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    files[200] = tmp_path / "broken.png"
    monkeypatch.setenv(PROCESSES_ENV, "0")
    ref = Predictor(digits_run).predict(files, top_k=2)  # one window, this process
    monkeypatch.delenv(PROCESSES_ENV)
    monkeypatch.setattr(predict_module, "MODEL_BATCH", 16)
    _same_answers(Predictor(digits_run).predict(files, top_k=2), ref)  # processes, 16 a batch
    monkeypatch.setattr(predict_module, "PREDICT_WINDOW", 100)
    monkeypatch.setattr(runtime, "CHUNK", 100)
    _same_answers(Predictor(digits_run).predict(files, top_k=2), ref)  # 3 windows
    assert ref[7]["error"].startswith("no such file") and "not an image" in ref[200]["error"]
    assert [r["input"] for r in ref] == [str(f) for f in files]
    got = imrec.load(bundle).predict(files, top_k=2)
    assert [("error" in g, "error" in r) for g, r in zip(got, ref, strict=True)] == [
        ("error" in r, "error" in r) for r in ref
    ]
    agree = np.mean([g["top"][0]["label"] == r["top"][0]["label"] for g, r in
                     zip(got, ref, strict=True) if "top" in r])  # fmt: skip
    assert agree > 0.97  # the bundle is int8: its parity gate allows a few flips


def test_manifest_round_trip(digits_run, bundle):
    written = json.loads((bundle / "manifest.json").read_text())
    from_bundle, from_run = imrec.load(bundle), imrec.load(digits_run)
    assert from_bundle.manifest == written
    meta = json.loads((digits_run / "best.json").read_text())
    for model in (from_bundle, from_run):
        assert model.task == "classify" and model.classes == meta["classes"]
        assert model.name == "cnn"
        assert (
            model.version
            == hashlib.sha256((digits_run / "best.safetensors").read_bytes()).hexdigest()[:12]
        )
        for key in ("labels", "input", "metrics", "model", "model_version", "preprocessing"):
            assert model.manifest[key] == written[key], key
    assert "onnx" not in from_run.manifest and "parity" not in from_run.manifest


def test_bundle_predicts_with_nothing_else(
    digits_run, test_images, image_files, tmp_path, monkeypatch
):
    """Export from a copy of the run, delete the copy and the data cache: the bundle still works."""
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    built = export_bundle(run, tmp_path / "exported")
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(built, moved)
    shutil.rmtree(run)
    shutil.rmtree(built)
    monkeypatch.setenv("IMREC_HOME", str(tmp_path / "empty-home"))  # no dataset cache either
    expected = Predictor(digits_run).predict(image_files)
    for backend in ("onnxruntime", "torch"):
        model = imrec.load(moved, backend=backend)
        assert _top1(model.predict(image_files)) == _top1(expected)
        batch = model.predict(test_images[0][:40])
        assert (
            sum(
                r["top"][0]["label"] == str(int(y))
                for r, y in zip(batch, test_images[1][:40], strict=True)
            )
            >= 28
        )


# ---- every input form ---------------------------------------------------------------------


def test_one_image_in_any_form_gives_one_result(bundle, image_files):
    model = imrec.load(bundle)
    path = image_files[0]
    by_path = model.predict(path)
    assert isinstance(by_path, dict) and by_path["input"] == str(path)
    pil = Image.open(path)
    arr = np.array(pil)  # (8, 8) uint8
    forms = {
        "str": str(path),
        "bytes": path.read_bytes(),
        "pil": pil,
        "hw": arr,
        "prepared": model.prepare(path),  # (1, 8, 8) uint8 tensor
    }
    for name, image in forms.items():
        r = model.predict(image)
        assert isinstance(r, dict), name
        assert r["top"] == by_path["top"], name
    # A colour array is a colour image: prepared as the same RGB picture read from a file.
    hwc = np.repeat(arr[:, :, None], 3, axis=2)
    assert model.predict(hwc)["top"] == model.predict(Image.fromarray(hwc))["top"]
    assert model.predict(path.read_bytes())["input"] == "<bytes>"


def test_a_bad_image_in_a_list_gives_an_error_entry(bundle, image_files, tmp_path):
    model = imrec.load(bundle)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    half = tmp_path / "half.png"
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(buf, format="PNG")
    half.write_bytes(buf.getvalue()[:60])
    inputs = [
        image_files[0],
        junk,
        tmp_path / "missing.png",
        half,
        b"",
        np.zeros((4, 4), np.float32),
        image_files[1],
    ]
    results = model.predict(inputs)
    assert len(results) == len(inputs)
    assert "top" in results[0] and "top" in results[-1]
    errors = [r.get("error", "") for r in results[1:-1]]
    assert "cannot identify image" in errors[0]
    assert "no such file" in errors[1]
    assert "truncated" in errors[2] or "cannot" in errors[2]
    assert "empty" in errors[3]
    assert "uint8" in errors[4]
    assert all("top" not in r for r in results[1:-1])
    assert model.predict(junk)["error"].startswith("cannot identify image")


def test_prepared_batches(bundle, test_images):
    model = imrec.load(bundle)
    images = test_images[0][:5]
    as_tensor, as_array = model.predict(images, top_k=2), model.predict(images.numpy(), top_k=2)
    assert as_tensor == as_array
    assert [r["input"] for r in as_tensor] == [f"<batch[{i}]>" for i in range(5)]
    # One call for a batch gives what one call per image gives (the one-thread session).
    singles = [model.predict(images[i]) for i in range(5)]
    for one, many in zip(singles, model.predict(images), strict=True):
        assert one["top"][0]["label"] == many["top"][0]["label"]
        assert abs(one["top"][0]["probability"] - many["top"][0]["probability"]) < 1e-5
    with pytest.raises(ValueError, match="uint8"):
        model.predict(images.float())
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        model.predict(torch.zeros(2, 1, 9, 9, dtype=torch.uint8))
    assert model.predict([]) == []


def test_prepare_is_imrec_predicts_preparation(digits_run, bundle, tmp_path):
    big = tmp_path / "big.png"
    canvas = np.full((120, 90), 255, np.uint8)  # dark ink on white paper, not 8x8
    canvas[30:90, 40:50] = 0
    Image.fromarray(canvas).save(big)
    expected = Predictor(digits_run).prepare(big)
    for backend in ("onnxruntime", "torch"):
        assert torch.equal(imrec.load(bundle, backend=backend).prepare(big), expected)


# ---- int8, explanations, errors -------------------------------------------------------------


def test_int8_precision_runs_the_quantized_model(digits_run, bundle, test_images):
    images = test_images[0]
    fp32, int8 = imrec.load(bundle), imrec.load(bundle, precision="int8")
    p, q = fp32.probabilities(images), int8.probabilities(images)
    assert (p.argmax(1) == q.argmax(1)).mean() > 0.9
    assert np.abs(p - q).max() > 0  # really another model
    with pytest.raises(ValueError, match="bundle exported with --quantize int8"):
        imrec.load(digits_run, precision="int8")
    with pytest.raises(ValueError, match="backend='onnxruntime'"):
        imrec.load(bundle, backend="torch", precision="int8")


def test_explain_uses_the_torch_weights_of_the_bundle(bundle, image_files):
    model = imrec.load(bundle)
    out = model.explain(image_files[0])
    assert out["label"] == model.predict(image_files[0])["top"][0]["label"]
    assert out["input"].shape == (1, 8, 8) and out["input"].dtype == np.uint8
    assert np.array_equal(np.asarray(out["input"]), model.prepare(image_files[0]).numpy())
    assert out["saliency"].shape == out["gradcam"].shape == (8, 8)
    for key in ("saliency", "gradcam"):
        assert 0 <= float(out[key].min()) and float(out[key].max()) <= 1


def test_bad_sources_and_options(tmp_path, bundle):
    with pytest.raises(FileNotFoundError, match="no bundle, run folder or checkpoint"):
        imrec.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither an imrec bundle"):
        imrec.load(tmp_path / "empty")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "manifest.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ExportError, match="format 'other/9'"):
        imrec.load(odd)
    (odd / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        imrec.load(odd)
    with pytest.raises(ValueError, match="backend must be one of"):
        imrec.load(bundle, backend="tensorflow")
    with pytest.raises(ValueError, match="runs on the CPU"):
        imrec.load(bundle, device="cuda")


def test_tinydet_decode_is_what_detect_does():
    torch.manual_seed(0)
    det = create_detector(
        "tinydet", num_classes=3, in_channels=1, input_size=(64, 64), width=8, neck=16
    )
    x = torch.rand(2, 1, 64, 64)
    direct = det.detect(x, score_thresh=0.0, max_det=20)
    with torch.no_grad():
        maps = det.eval()(x)
    decoded = TinyDet.decode(*maps, (64, 64), score_thresh=0.0, max_det=20)
    for a, b in zip(direct, decoded, strict=True):
        assert len(a["boxes"]) == 20
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_predict_bundle(bundle, image_files, tmp_path, capsys):
    assert main(["predict", str(bundle), *map(str, image_files[:2]), "--json", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == imrec.load(bundle).predict(image_files[:2], top_k=2)
    assert main(["predict", str(bundle), str(image_files[0]), "--backend", "torch"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image_files[0]}: ") and len(line.split()) == 11  # 5 labels, 5 numbers
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"nope")
    assert main(["predict", str(bundle), str(junk)]) == 1
    assert "ERROR cannot identify image" in capsys.readouterr().out
    assert main(["predict", str(tmp_path), str(image_files[0])]) == 2
    assert "imrec: error:" in capsys.readouterr().err


def test_onnx_runner_spreads_a_batch_without_changing_it(bundle):
    from imrec.deploy.onnx import OnnxRunner, ort_session

    runner = OnnxRunner(bundle / "model.onnx")
    x = np.random.default_rng(1).random((130, 1, 8, 8), dtype=np.float32)  # pieces of 64, 64, 2
    whole = ort_session(bundle / "model.onnx").run(None, {"images": x})[0]
    spread = runner(x)[0]
    assert spread.shape == (130, 10) and np.abs(spread - whole).max() < 1e-5
    assert np.abs(runner(x[:1])[0] - whole[:1]).max() < 1e-5
    assert runner(x[:2])[0].shape == (2, 10)
