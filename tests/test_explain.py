"""Grad-CAM and saliency: they point at the evidence, leave the model as it was, and the
``imrec explain`` / ``imrec eval`` paths write real overlays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import imrec
from imrec.cli import main
from imrec.core.batching import Batcher
from imrec.core.checkpoint import save_checkpoint
from imrec.explain import explain, explain_image, gradcam, gradcam_images, overlay, saliency
from imrec.models import create_model, list_models
from imrec.models.base import Classifier
from imrec.models.classifiers import PooledFeatures

SIDE, HALF, BAR = 16, 8, 5  # image side, quadrant side, bar length


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared 2-core box they cost seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- synthetic evidence: a horizontal (class 0) or vertical (class 1) bar in one quadrant ----


def _bar_image(label: int, quadrant: int, noise: torch.Tensor, offset: tuple[int, int]):
    """(1, SIDE, SIDE) in [0, 1]: noise below 0.3 and one bright bar inside ``quadrant``."""
    x = noise.clone()
    qy, qx = divmod(quadrant, 2)
    top, left = qy * HALF + offset[0], qx * HALF + offset[1]
    h, w = (1, BAR) if label == 0 else (BAR, 1) if label == 1 else (0, 0)
    x[0, top : top + h, left : left + w] = 1.0
    return x


def _bars(
    n: int, gen: torch.Generator, classes: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random images ``(n, 1, S, S)``, their labels and quadrants (class 2: no bar)."""
    labels = torch.randint(0, classes, (n,), generator=gen)
    quadrants = torch.randint(0, 4, (n,), generator=gen)
    noise = torch.rand(n, 1, SIDE, SIDE, generator=gen) * 0.3
    # A margin of 1 px keeps the bar (and the 3x3 windows that see its ends) off the edges.
    offsets = torch.randint(1, HALF - BAR, (n, 2), generator=gen)
    x = torch.stack([_bar_image(int(labels[i]), int(quadrants[i]), noise[i], offsets[i].tolist())
                     for i in range(n)])  # fmt: skip
    return x, labels, quadrants


def _quadrant_mass(maps: torch.Tensor, quadrants: torch.Tensor) -> torch.Tensor:
    """Share of each map ``(N, S, S)`` that lies in the image's bar quadrant ``(N,)``."""
    mask = torch.zeros_like(maps)
    for i, q in enumerate(quadrants.tolist()):
        qy, qx = divmod(q, 2)
        mask[i, qy * HALF : (qy + 1) * HALF, qx * HALF : (qx + 1) * HALF] = 1
    total = maps.flatten(1).sum(1)
    return torch.where(total > 0, (maps * mask).flatten(1).sum(1) / total.clamp_min(1e-12), 0)


def _line_detector_model() -> Classifier:
    """A classifier set by hand: it sees nothing but runs of 5 bright pixels.

    Channel 0 fires on a horizontal run, channel 1 on a vertical one (threshold 4: noise
    below 0.3 never reaches it); the head votes horizontal (class 0) against vertical.
    """
    conv = nn.Conv2d(1, 2, BAR, padding=BAR // 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, BAR // 2, :] = 1.0
        conv.weight[1, 0, :, BAR // 2] = 1.0
        conv.bias.fill_(-(BAR - 1.0))
    features = nn.Sequential(conv, nn.ReLU())
    model = Classifier(PooledFeatures(features), 2, 2, cam_layer=features[1])
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[10.0, -10.0], [-10.0, 10.0]]))
        model.head.bias.zero_()
    return model.eval()


@pytest.mark.parametrize("quadrant", [0, 1, 2, 3])
@pytest.mark.parametrize("label", [0, 1])
def test_maps_point_at_the_only_evidence_of_a_hand_set_model(label, quadrant):
    noise = torch.rand(1, SIDE, SIDE, generator=torch.Generator().manual_seed(quadrant)) * 0.3
    x = _bar_image(label, quadrant, noise, (2, 1))[None]  # (1, 1, S, S)
    model = _line_detector_model()
    assert int(model(x).argmax()) == label
    q = torch.tensor([quadrant])
    for maps in (gradcam(model, x), saliency(model, x), gradcam(model, x, target=label)):
        assert maps.shape == (1, SIDE, SIDE)
        assert float(maps.max()) == pytest.approx(1.0)
        assert float(_quadrant_mass(maps, q)) > 0.95  # transposed or flipped maps fail here
    # The other class has no positive evidence anywhere: its Grad-CAM stays all zero.
    assert float(gradcam(model, x, target=1 - label).abs().max()) == 0.0


def _train_bar_model(steps: int = 100, seed: int = 3) -> Classifier:
    """A small fully convolutional net with global average pooling (like every imrec
    classifier, minus the downsampling), trained on horizontal / vertical / no bar images."""
    torch.manual_seed(seed)
    features = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
    )
    model = Classifier(PooledFeatures(features), 8, 3, cam_layer=features[3])
    # A zero head starts the classes alike, so each bar class learns evidence of its own
    # (with two classes, one of them often wins by the mere absence of the other's bar, and
    # then has no evidence anywhere to map); the no-bar class takes the background's.
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, y, _ = _bars(32, gen, classes=3)
        loss = F.cross_entropy(model((x - 0.2) / 0.3), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_maps_find_the_evidence_a_trained_model_uses(one_thread):
    model = _train_bar_model()
    x, y, quadrants = _bars(96, torch.Generator().manual_seed(100), classes=3)
    x = (x - 0.2) / 0.3
    right = (model(x).argmax(1) == y) & (y < 2)  # the images with a bar to point at
    assert right.sum() > 0.9 * (y < 2).sum()
    for method in (gradcam, saliency):
        mass = _quadrant_mass(method(model, x), quadrants)[right]
        assert mass.mean() > 0.6, method.__name__  # about 0.25 for maps that ignore the bar


# ---- the model is left as it was; every registered model works ------------------------------


def _no_hooks(model: nn.Module) -> bool:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return not any(getattr(m, kind) for m in model.modules() for kind in kinds)


@pytest.mark.parametrize("training", [False, True])
def test_maps_leave_the_model_as_it_was(training):
    model = create_model("cnn", num_classes=3, in_channels=1, input_size=(16, 16))
    model.train(training)
    x = torch.randn(4, 1, 16, 16)
    # Weights only: a forward pass in training mode updates BatchNorm's statistics, as it should.
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for method in (gradcam, saliency):
        assert method(model, x).shape == (4, 16, 16)
        with pytest.raises(ValueError, match="target"):
            method(model, x, target=3)  # fails after the hook went on: it must still come off
    assert model.training is training
    assert _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


MODELS = sorted(list_models()) + ["tv:resnet18", "tv:mobilenet_v3_small"]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_is_explained_or_refused_clearly(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_channels=3, input_size=(32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    methods = [saliency]
    if model.cam_layer is None:
        with pytest.raises(ValueError, match="cam_layer"):
            gradcam(model, x)
    else:
        methods.append(gradcam)
    for method in methods:
        maps = method(model, x, target=[1, 2])
        assert maps.shape == (2, 32, 32) and maps.dtype == torch.float32
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        peaks = maps.flatten(1).amax(1)  # each map is scaled to its own maximum
        assert all(p == pytest.approx(1.0, abs=1e-5) or p == 0 for p in peaks.tolist())
    assert (model.cam_layer is None) == (name == "mlp")


def test_gradcam_images_for_the_gallery():
    batcher = Batcher.from_stats([0.3], [0.4])
    images = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    model = create_model("cnn", num_classes=3, in_channels=1, input_size=(16, 16)).train()
    maps = gradcam_images(model, images, batcher, target=torch.tensor([0, 1, 2, 0, 1]))
    assert model.training  # evaluated in eval mode, handed back in training mode
    assert maps.shape == (5, 16, 16) and maps.dtype == np.float32
    expected = gradcam(model.eval(), batcher(images), target=[0, 1, 2, 0, 1])
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-6)
    mlp = create_model("mlp", num_classes=3, in_channels=1, input_size=(16, 16))
    assert gradcam_images(mlp, images, batcher) is None  # nothing to overlay, no error


def test_overlay_is_upscaled_and_coloured():
    image = np.full((1, 8, 8), 128, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:4] = 1.0  # hot top half
    out = overlay(image, heat)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    top, bottom = out[:100].reshape(-1, 3).mean(0), out[124:].reshape(-1, 3).mean(0)
    assert top[0] > top[2] + 50  # jet: hot is red
    assert bottom[2] > bottom[0] + 50  # cold is blue
    assert overlay(np.zeros((3, 300, 250), np.uint8), np.zeros((300, 250))).shape == (300, 250, 3)
    assert overlay(image[:, :, :7], heat[:, :7]).shape == (256, 224, 3)  # whole pixels: 32x


# ---- end to end on a tiny digits run -----------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    imrec.fit("digits", train={"epochs": 2}, out=str(out), progress=False)
    return out


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory, digits_run):
    """Three test-split digits as PNG files, and a file that is not an image."""
    folder = tmp_path_factory.mktemp("digits-png")
    test = imrec.load_dataset("digits").test
    paths = []
    for i in range(3):
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(paths[-1])
    (folder / "broken.png").write_bytes(b"not a png")
    return paths, folder / "broken.png"


def _colourful(png) -> float:
    """Share of pixels whose channels differ a lot: the jet map on grey digits, not the page."""
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return float(((rgb.max(-1) - rgb.min(-1)) > 80).mean())


def test_explain_command_writes_overlays_and_reports_bad_images(
    capsys, digits_run, digit_files, tmp_path
):
    paths, broken = digit_files
    out = tmp_path / "explain"
    code = main(["explain", str(digits_run), *map(str, paths[:2]), str(broken), "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1  # one image could not be read; the others were still explained
    assert len(lines) == 3 and "ERROR" in lines[2] and "broken.png" in lines[2]
    for path, line in zip(paths[:2], lines, strict=False):
        for kind in ("gradcam", "saliency"):
            png = out / f"{path.stem}-{kind}.png"
            assert str(png) in line
            with Image.open(png) as im:
                assert min(im.size) >= 224
            assert _colourful(png) > 0.1
    assert not list(out.glob("broken*"))


def test_explain_api_matches_predict(digits_run, digit_files):
    paths, _ = digit_files
    predictor = imrec.Predictor(digits_run)
    expected = predictor.predict(paths, top_k=1)
    pil = Image.open(paths[1])
    results = explain(digits_run, [paths[0], paths[1].read_bytes(), pil, np.asarray(pil)])
    assert [r["name"] for r in results] == [str(paths[0]), "<bytes>", "<PngImageFile>", "<ndarray>"]
    for r, e in zip(results, [expected[0], expected[1], expected[1], expected[1]], strict=True):
        assert r["label"] == r["target"] == e["top"][0]["label"]
        assert r["probability"] == pytest.approx(e["top"][0]["probability"], abs=1e-5)
        for kind in ("gradcam", "saliency"):
            assert r[kind].shape == (8, 8) and r[kind].dtype == np.float32
            assert 0 <= r[kind].min() and r[kind].max() <= 1
        assert r["input"].dtype == np.uint8 and r["input"].shape == (1, 8, 8)
    np.testing.assert_array_equal(results[0]["input"], predictor.prepare(paths[0]).numpy())
    np.testing.assert_array_equal(results[1]["gradcam"], results[3]["gradcam"])


def test_explain_a_chosen_class(digits_run, digit_files):
    paths, _ = digit_files
    model, meta = imrec.load_model(digits_run)
    own = explain_image(model, meta, paths[0])
    other = next(c for c in meta["classes"] if c != own["label"])
    chosen = explain_image(model, meta, paths[0], target=other)
    assert chosen["label"] == own["label"] and chosen["target"] == other
    assert chosen["target_probability"] < chosen["probability"]
    assert not np.allclose(chosen["saliency"], own["saliency"])
    with pytest.raises(ValueError, match="unknown target class 'giraffe'"):
        explain(digits_run, paths[:1], target="giraffe")


def test_explain_reads_an_export_bundle(digits_run, digit_files, tmp_path):
    """A bundle's weights carry the checkpoint metadata; without it, the manifest suffices."""
    from safetensors.torch import load_file, save_file

    paths, _ = digit_files
    meta = json.loads((digits_run / "best.json").read_text())
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    inp = {**meta["input"], "domain": meta["domain"], "ink": meta["ink"]}
    manifest = {"task": "classify", "model": meta["model"], "labels": meta["classes"], "input": inp,
                "postprocessing": {"confidence": meta["confidence"]}}  # fmt: skip
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(digits_run / "best.safetensors", bundle / "weights.safetensors")
    from_run = explain(digits_run, paths)
    for _ in range(2):
        from_bundle = explain(bundle, paths, out_dir=tmp_path / "out")
        for a, b in zip(from_run, from_bundle, strict=True):
            assert (a["label"], a["probability"]) == (b["label"], b["probability"])
            np.testing.assert_allclose(a["gradcam"], b["gradcam"], atol=1e-6)
        assert all(Path(f).is_file() for r in from_bundle for f in r["files"].values())
        # Second round: the same weights without imrec metadata in their header.
        save_file(load_file(bundle / "weights.safetensors"), bundle / "weights.safetensors")


def test_detection_models_are_refused_clearly(capsys, digit_files, tmp_path):
    paths, _ = digit_files
    meta = {"task": "detect", "model": {"name": "tinydet"}, "classes": ["7"], "input": {}}
    save_checkpoint(tmp_path / "det" / "best", {"w": torch.zeros(1)}, meta)
    assert main(["explain", str(tmp_path / "det"), str(paths[0])]) == 2
    err = capsys.readouterr().err
    assert "detection model" in err and "classifiers" in err


def test_eval_gallery_gets_gradcam_overlays(capsys, monkeypatch, digits_run):
    import imrec.classify.viz

    seen = {}
    original = imrec.classify.viz.save_mistakes

    def spy(images, *args, overlays=None, **kwargs):
        seen["images"], seen["overlays"] = images, overlays
        return original(images, *args, overlays=overlays, **kwargs)

    monkeypatch.setattr(imrec.classify.viz, "save_mistakes", spy)
    (digits_run / "mistakes.png").unlink()
    assert main(["eval", str(digits_run)]) == 0
    overlays = seen["overlays"]
    assert overlays is not None and overlays.shape == (len(seen["images"]), 8, 8)
    assert 0 < len(overlays) <= 32 and overlays.min() >= 0 and overlays.max() <= 1
    assert (overlays.reshape(len(overlays), -1).max(1) > 0).any()
    assert _colourful(digits_run / "mistakes.png") > 0.05  # grey digits under a jet map
