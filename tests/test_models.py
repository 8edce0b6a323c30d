"""One harness over every model: shapes, gradients, head naming, save/load, weight norm."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from imrec.models import Classifier, create_model, list_models, model_options, register_model
from imrec.models.external import load_state_dict_file

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 64, 64)]
NUM_CLASSES = 3
# Rule for keeping the file fast: models with an option to shrink them are tested at a small
# width (same code paths, fewer parameters); torchvision models, which cannot shrink, are
# tested on one shape each (grey 28×28 for resnet18, RGB 32×32 for mobilenet).
SMALL = {"resnet18": {"width": 0.25}, "inception": {"width": 8}}
EXTERNAL = [("tv:resnet18", SHAPES[1]), ("tv:mobilenet_v3_small", SHAPES[2])]
CASES = [(name, shape) for name in list_models() for shape in SHAPES] + EXTERNAL


def _make(name: str, shape: tuple[int, int, int], **kwargs) -> Classifier:
    c, h, w = shape
    torch.manual_seed(0)
    return create_model(
        name,
        num_classes=NUM_CLASSES,
        in_channels=c,
        input_size=(h, w),
        **SMALL.get(name, {}),
        **kwargs,
    )


def _roundtrip(model: Classifier, name: str, shape, tmp_path, **kwargs) -> None:
    """Save to safetensors, load into a freshly built model: same eval outputs."""
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fresh = _make(name, shape, **kwargs)
    fresh.load_state_dict(load_file(str(path)))
    x = torch.randn(2, *shape)
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.parametrize(("name", "shape"), CASES, ids=lambda v: str(v))
def test_model_contract(name: str, shape: tuple[int, int, int], tmp_path) -> None:
    model = _make(name, shape)
    assert isinstance(model, Classifier)
    assert "head.weight" in model.state_dict() and "head.bias" in model.state_dict()
    x = torch.randn(2, *shape)  # (B, C, H, W)

    model.train()
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"

    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    _roundtrip(model, name, shape, tmp_path)

    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.head.weight.shape == (7, model.num_features)


@pytest.mark.parametrize("name", [*list_models(), "tv:mobilenet_v3_small"])
def test_weight_norm_roundtrip(name: str, tmp_path) -> None:
    shape = (1, 28, 28)
    model = _make(name, shape, weight_norm=True)
    keys = model.state_dict().keys()
    assert any(k.endswith("parametrizations.weight.original0") for k in keys)
    assert "head.weight" in keys  # the head stays plain for fine-tuning
    x = torch.randn(2, *shape)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # Train a step so the stored magnitudes differ from the defaults a fresh model has.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * p.grad)
    _roundtrip(model, name, shape, tmp_path, weight_norm=True)


@pytest.mark.parametrize("name", [n for n in list_models() if n != "mlp"])
def test_cam_layer_gives_last_feature_map(name: str) -> None:
    model = _make(name, (1, 28, 28)).eval()
    seen = []
    model.cam_layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.randn(2, 1, 28, 28))
    assert len(seen) == 1 and len(seen[0]) == 4  # one (B, C, h, w) map
    assert seen[0][1] == model.num_features


def test_mlp_matches_tutorial_parameter_count() -> None:
    model = create_model("mlp", num_classes=10, in_channels=1, input_size=(28, 28))
    # 784*64 + 64 + 64*10 + 10
    assert sum(p.numel() for p in model.parameters()) == 50_890


def test_options_accept_strings_and_reject_unknown() -> None:
    kw = {"num_classes": 10, "in_channels": 1, "input_size": (28, 28)}
    wide = create_model("cnn", width="16", dropout="0.3", **kw)
    narrow = create_model("cnn", width=8, **kw)
    assert wide.num_features == 2 * narrow.num_features
    assert wide.backbone.dropout.p == pytest.approx(0.3)
    assert create_model("mlp", hidden="32", **kw).num_features == 32
    with pytest.raises(ValueError, match=r"cnn got unexpected option 'foo'; valid: .*width"):
        create_model("cnn", foo=1, **kw)
    with pytest.raises(ValueError, match="width='2.5' is not a valid int"):
        create_model("cnn", width="2.5", **kw)
    with pytest.raises(ValueError, match="size must be one of"):
        create_model("cnn", size="xl", **kw)
    with pytest.raises(ValueError, match="depth must be"):
        create_model("resnet", depth=21, **kw)
    assert model_options("resnet") == {"depth": 0, "width": 1.0}


def test_cnn_sizes_and_resnet_depths() -> None:
    kw = {"num_classes": 10, "in_channels": 1, "input_size": (28, 28)}

    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(create_model("cnn", size="m", **kw)) > 2 * count(create_model("cnn", **kw))
    # size d: six convs where s has four, its stages width·½/¾/1½/3 wide, about s's parameters
    convs = {
        size: [
            m.out_channels
            for m in create_model("cnn", size=size, width=64, **kw).modules()
            if isinstance(m, torch.nn.Conv2d)
        ]
        for size in ("s", "d")
    }
    assert convs == {"s": [48, 64, 128, 256], "d": [32, 48, 96, 96, 192, 192]}
    hanzi = {"num_classes": 3755, "in_channels": 1, "input_size": (48, 48)}
    s, d = (count(create_model("cnn", size=z, width=64, **hanzi)) for z in ("s", "d"))
    assert abs(d - s) < 0.01 * s  # 1.36 M each
    blocks = [
        sum(isinstance(m, torch.nn.Conv2d) for m in create_model("resnet", depth=d, **kw).modules())
        for d in (20, 32)
    ]
    # 19 / 31 convs in the main path plus 2 shortcut projections.
    assert blocks == [21, 33]


def test_unknown_model_lists_names_and_prefixes() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*cnn.*tv:<name>.*timm:<name>"):
        create_model("nope", num_classes=2, in_channels=1, input_size=(8, 8))
    with pytest.raises(ValueError, match="tv:nope"):
        create_model("tv:nope", num_classes=2, in_channels=1, input_size=(8, 8))
    with pytest.raises(ValueError, match="tv:resnet18 got unexpected option 'width'"):
        create_model("tv:resnet18", num_classes=2, in_channels=1, input_size=(8, 8), width=2)


def test_timm_missing_says_how_to_install() -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install timm"):
            create_model("timm:resnet18", num_classes=2, in_channels=3, input_size=(32, 32))
    else:
        model = create_model("timm:resnet18", num_classes=2, in_channels=3, input_size=(32, 32))
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_register_duplicate_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn")(lambda **kw: None)


def test_tv_pretrained_from_local_safetensors(tmp_path) -> None:
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.mobilenet_v3_small(num_classes=5)
    path = tmp_path / "mnv3.safetensors"
    save_file(source.state_dict(), str(path))
    kw = {"num_classes": 4, "in_channels": 1, "input_size": (32, 32)}
    model = create_model("tv:mobilenet_v3_small", pretrained=str(path), **kw)
    loaded = model.backbone.model.state_dict()
    assert "classifier.3.weight" not in loaded  # the old final layer was dropped
    torch.testing.assert_close(loaded["features.0.0.weight"], source.features[0][0].weight)
    grey = torch.randn(2, 1, 32, 32)
    source.classifier[3] = torch.nn.Identity()
    source.eval(), model.eval()
    with torch.no_grad():
        expected = source(grey.expand(-1, 3, -1, -1))  # grey is repeated to RGB
        torch.testing.assert_close(model.forward_features(grey), expected)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_model("tv:mobilenet_v3_small", pretrained="missing.pth", **kw)
    torch.save({"features.0.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not fit"):
        create_model("tv:mobilenet_v3_small", pretrained=str(tmp_path / "bad.pth"), **kw)
    assert set(load_state_dict_file(tmp_path / "bad.pth")) == {"features.0.0.weight"}


def test_tv_pretrained_unknown_name_lists_the_valid_ones(monkeypatch, tmp_path) -> None:
    """Named weights are downloaded: tests/test_pretrained.py does that against a local server."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    kw = {"num_classes": 2, "in_channels": 3, "input_size": (32, 32)}
    with pytest.raises(
        ValueError, match="unknown pretrained weights 'NOPE'; valid: IMAGENET1K_V1, DEFAULT"
    ):
        create_model("tv:mobilenet_v3_small", pretrained="NOPE", **kw)
    assert not (tmp_path / "checkpoints").exists()  # nothing was fetched


def test_cnn_neck_keeps_where_features_lie() -> None:
    """``neck=N``: the last map flattened into N features, so a mirrored map reads otherwise."""
    from imrec.models.classifiers import GridNeck, PooledFeatures

    torch.manual_seed(0)
    fmap = torch.randn(4, 8, 3, 3)
    neck = GridNeck(torch.nn.Identity(), 8, (3, 3), 16).eval()
    pooled = PooledFeatures(torch.nn.Identity()).eval()
    assert torch.allclose(pooled(fmap), pooled(fmap.flip(-1)))  # pooling forgets where
    assert not torch.allclose(neck(fmap), neck(fmap.flip(-1)), atol=1e-3)  # the neck does not
    hanzi = {"num_classes": 3755, "in_channels": 1, "input_size": (48, 48)}
    plain = create_model("cnn", width=64, **hanzi)
    necked = create_model("cnn", width=64, neck=256, **hanzi)
    assert necked.num_features == 256 and necked.backbone.hw == (3, 3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the convs as before; the head reads 256 features; plus 3x3x256 -> 256 and its BN
    assert count(necked) == count(plain) + 3 * 3 * 256 * 256 + 2 * 256
    assert necked.eval()(torch.zeros(2, 1, 48, 48)).shape == (2, 3755)
    with pytest.raises(ValueError, match="built for a 3x3 feature map"):
        necked(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="neck must be >= 0"):
        create_model("cnn", neck=-1, **hanzi)
    # a non-square input: the map's own shape (40 x 56 -> 5 x 7)
    wide = create_model("cnn", neck=8, num_classes=3, in_channels=1, input_size=(40, 56))
    assert wide.backbone.hw == (5, 7) and wide.eval()(torch.zeros(1, 1, 40, 56)).shape == (1, 3)


def test_cnn_weights_fit_every_input_size():
    """Fine-tuning across datasets (28 px MNIST -> 64 px Chinese MNIST) needs equal names."""
    small = create_model("cnn", num_classes=10, in_channels=1, input_size=(28, 28))
    big = create_model("cnn", num_classes=15, in_channels=1, input_size=(64, 64))
    shapes = {k: v.shape for k, v in small.state_dict().items() if not k.startswith("head.")}
    assert shapes == {k: v.shape for k, v in big.state_dict().items() if not k.startswith("head.")}


def test_cnn_takes_sides_its_stem_does_not_divide():
    """The space-to-depth stem pads to its factor (was a pixel_unshuffle error at 100 x 37)."""
    from imrec.models.classifiers import SpaceToDepth

    x = torch.randn(2, 1, 8, 12)
    assert torch.equal(SpaceToDepth(4)(x), torch.nn.functional.pixel_unshuffle(x, 4))
    odd = torch.randn(2, 1, 9, 13)  # padded with zeros to 12 x 16, the extra cells zero
    assert torch.equal(SpaceToDepth(4)(odd)[..., :2, :3], SpaceToDepth(4)(odd[..., :8, :12]))
    assert SpaceToDepth(4)(odd)[:, :, 2].abs().sum() > 0  # the ninth row is kept, not cut
    for size, neck in [((100, 37), 0), ((37, 100), 16), ((33, 17), 16)]:
        m = create_model("cnn", num_classes=3, in_channels=1, input_size=size, neck=neck).eval()
        assert m(torch.zeros(2, 1, *size)).shape == (2, 3)


def test_cnn_strided_stages_halve_the_map_with_their_conv() -> None:
    """``strided=N``: the first N halving stages halve with a stride-2 conv, not a max-pool after
    it; the same parameters (weights move between the two), any input size with a neck."""
    from torch import nn

    kw = {"num_classes": 3755, "in_channels": 1, "input_size": (56, 56), "width": 64, "neck": 256}
    pooled = create_model("cnn", **kw)
    strided = create_model("cnn", strided=1, **kw)
    assert pooled.state_dict().keys() == strided.state_dict().keys()
    shapes = {k: v.shape for k, v in pooled.state_dict().items()}
    assert shapes == {k: v.shape for k, v in strided.state_dict().items()}
    strided.load_state_dict(pooled.state_dict())  # the same weights fit either way

    def conv_outputs(model: nn.Module, side: int) -> list[tuple[int, int, int]]:
        sizes: list[tuple[int, int, int]] = []
        hooks = [
            m.register_forward_hook(lambda m, i, o: sizes.append((m.stride[0], *o.shape[2:])))
            for m in model.modules()
            if isinstance(m, nn.Conv2d)
        ]
        model.eval()(torch.zeros(1, 1, side, side))
        for h in hooks:
            h.remove()
        return sizes

    # 56 px: space-to-depth 28; stage 2's conv computes 28x28 and pools, or computes 14x14
    assert conv_outputs(pooled, 56) == [(1, 28, 28), (1, 28, 28), (1, 14, 14), (1, 7, 7)]
    assert conv_outputs(strided, 56) == [(1, 28, 28), (2, 14, 14), (1, 14, 14), (1, 7, 7)]
    assert [type(m) for m in strided.modules() if isinstance(m, nn.MaxPool2d)] == [nn.MaxPool2d] * 2
    # odd maps: a stride-2 conv rounds up where a max-pool rounds down; the neck follows
    for side in (45, 50, 57):
        for n in (1, 2, 3):
            model = create_model(
                "cnn", strided=n, num_classes=3, in_channels=1, input_size=(side, side), neck=8
            )
            assert model.eval()(torch.zeros(2, 1, side, side)).shape == (2, 3)
    with pytest.raises(ValueError, match="strided must be >= 0"):
        create_model("cnn", strided=-1, num_classes=3, in_channels=1, input_size=(28, 28))
