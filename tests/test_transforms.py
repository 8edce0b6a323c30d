"""Augmentation presets, the batched augmenter and normalisation statistics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from imrec.classify.augment import (
    AugmentConfig,
    BatchAugment,
    augment_off,
    augment_preset,
    train_transforms,
)
from imrec.core.batching import norm_stats, normalize

PRESETS = [(d, s) for d in ("handwriting", "objects", "photo") for s in ("fast", "best")]


def _glyph(b: int = 8, size: int = 28) -> torch.Tensor:
    """A batch of identical asymmetric 'F'-like glyphs, bright on black, ``(B, 1, S, S)``."""
    x = torch.zeros(b, 1, size, size)
    x[:, :, 6:22, 8:11] = 1.0  # stem on the left
    x[:, :, 6:9, 8:20] = 1.0  # top bar to the right
    x[:, :, 13:15, 8:16] = 0.8  # middle bar
    return x


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _only(cfg: AugmentConfig, *names: str) -> AugmentConfig:
    """``cfg`` with every option switched off except ``names``."""
    off = augment_off()
    keep = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names}
    return dataclasses.replace(off, **keep)


# --- presets --------------------------------------------------------------------------------


def test_augment_off_fields_match_the_config():
    off = augment_off()
    names = {f.name for f in dataclasses.fields(AugmentConfig)}
    assert {f.name for f in dataclasses.fields(off)} == names
    for domain, strength in PRESETS:
        cfg = augment_preset(domain, strength)
        switched = dataclasses.replace(cfg, **{n: getattr(off, n) for n in names})
        assert switched == off
    assert not off.geometric
    assert BatchAugment(off).describe() == "none"


def test_presets():
    for strength in ("fast", "best"):
        assert augment_preset("handwriting", strength).hflip is False
        assert augment_preset("photo", strength).hflip is True
        assert augment_preset("objects", strength).hflip is True
        assert augment_preset("photo", strength).crop_scale is not None
    fast, best = augment_preset("handwriting", "fast"), augment_preset("handwriting", "best")
    assert best.elastic > fast.elastic and best.erasing > 0
    assert "hflip" not in BatchAugment(best).describe()
    assert "rotate ±10°" in repr(BatchAugment(fast))
    with pytest.raises(ValueError, match="unknown augmentation domain 'faces'.*handwriting"):
        augment_preset("faces")
    with pytest.raises(ValueError, match="strength 'max'"):
        augment_preset("photo", "max")


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="erasing"):
        AugmentConfig(erasing=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.5, 2.0))


def test_handwriting_never_flips_but_photos_do():
    x = _glyph(32)
    hand = BatchAugment(_only(augment_preset("handwriting", "best"), "hflip"))
    assert torch.equal(hand(x, _gen(0)), x)
    photo = BatchAugment(_only(augment_preset("photo", "best"), "hflip"))
    y = photo(x, _gen(0))
    mirrored = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(32)]
    unchanged = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(32)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True))
    assert 5 <= sum(mirrored) <= 27


# --- BatchAugment ---------------------------------------------------------------------------


def test_all_off_is_identity():
    x = torch.rand(4, 3, 16, 20)
    assert torch.equal(BatchAugment(augment_off())(x, _gen(0)), x)
    # a geometric option with zero effect still goes through the grid and must not move pixels
    still = BatchAugment(AugmentConfig(rotate=(0.0, 0.0), scale=(1.0, 1.0), translate=0.0))
    assert torch.allclose(still(x, _gen(0)), x, atol=1e-5)


@pytest.mark.parametrize(("domain", "strength"), PRESETS)
def test_output_shape_dtype_range_and_repeatability(domain, strength):
    channels = 3 if domain == "photo" else 1
    x = torch.rand(6, channels, 24, 24)
    aug = BatchAugment(augment_preset(domain, strength))
    y = aug(x, _gen(5))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(aug(x, _gen(5)), y)  # same generator state -> same output
    assert not torch.allclose(aug(x, _gen(6)), y)  # another seed -> another augmentation


def test_rotation_geometry():
    x = torch.rand(3, 2, 12, 12)
    ccw = BatchAugment(AugmentConfig(rotate=(90.0, 90.0)))(x, _gen(0))
    assert torch.allclose(ccw, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)  # counter-clockwise
    cw = BatchAugment(AugmentConfig(rotate=(-90.0, -90.0)))(x, _gen(0))
    assert torch.allclose(cw, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    wide = torch.rand(2, 1, 10, 16)  # non-square: 180° must still be an exact flip
    half = BatchAugment(AugmentConfig(rotate=(180.0, 180.0)))(wide, _gen(0))
    assert torch.allclose(half, wide.flip(2, 3), atol=1e-5)


def test_small_rotation_keeps_the_mass_centre():
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0  # centred bar
    y = BatchAugment(AugmentConfig(rotate=20.0))(x, _gen(1))
    ys = torch.arange(28.0).view(1, 1, 28, 1)
    cy = (y * ys).sum((1, 2, 3)) / y.sum((1, 2, 3))
    assert torch.allclose(cy, torch.full_like(cy, 13.5), atol=0.2)
    assert not torch.allclose(y, x)


def test_translation_moves_content_and_fill_pads():
    x = torch.zeros(8, 1, 20, 20)
    moved = BatchAugment(AugmentConfig(translate=0.3, fill=1.0))(x, _gen(2))
    assert moved.amax(dim=(1, 2, 3)).min() == 1.0  # white moved in from the edges
    assert moved[:, :, 8:12, 8:12].max() == 0  # the centre is still the (black) content
    black = BatchAugment(AugmentConfig(translate=0.3))(x, _gen(2))
    assert black.max() == 0


def test_random_resized_crop_zooms_in():
    x = torch.zeros(4, 3, 32, 32)
    x[:, :, ::2] = 1.0  # stripes one pixel high
    y = BatchAugment(AugmentConfig(crop_scale=(0.25, 0.25)))(x, _gen(0))
    # zooming in by 2 makes the stripes two pixels high: neighbouring rows mostly agree
    same = (y[:, :, 1:] - y[:, :, :-1]).abs().mean()
    assert same < 0.6 * (x[:, :, 1:] - x[:, :, :-1]).abs().mean()


def test_erasing_zeroes_one_rectangle():
    x = torch.ones(16, 2, 28, 28)
    y = BatchAugment(AugmentConfig(erasing=1.0))(x, _gen(3))
    for img in y:
        assert torch.equal(img[0], img[1])  # the same rectangle in every channel
        zero = img[0] == 0
        assert zero.any() and ((img[0] == 0) | (img[0] == 1)).all()
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert zero.sum() == box  # solid rectangle
    assert torch.equal(BatchAugment(AugmentConfig(erasing=1e-9))(x, _gen(3)), x)


def test_elastic_warps_but_keeps_the_ink():
    x = _glyph(8)
    y = BatchAugment(AugmentConfig(elastic=2.0))(x, _gen(4))
    assert (y - x).abs().amax(dim=(1, 2, 3)).min() > 0.3  # every sample changed
    ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert ((ratio - 1).abs() < 0.3).all()  # locally squeezed or stretched ...
    assert abs(ratio.mean() - 1) < 0.1  # ... but no ink appears or vanishes on average


def test_colour_jitter_changes_each_sample_differently():
    x = torch.rand(8, 3, 16, 16) * 0.5 + 0.25
    y = BatchAugment(AugmentConfig(color_jitter=0.4))(x, _gen(0))
    means = y.mean((1, 2, 3)) / x.mean((1, 2, 3))
    assert means.std() > 0.02
    grey = torch.rand(4, 1, 8, 8)
    assert BatchAugment(AugmentConfig(color_jitter=0.4))(grey, _gen(0)).shape == grey.shape


def test_rejects_non_float_batches():
    with pytest.raises(ValueError, match="float"):
        BatchAugment(augment_off())(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), None)


# --- train_transforms -----------------------------------------------------------------------


@pytest.mark.parametrize(("domain", "strength"), PRESETS)
def test_train_transforms_on_tensors_and_pil(domain, strength):
    torch.manual_seed(0)
    t = train_transforms(augment_preset(domain, strength), 28)
    channels = 3 if domain == "photo" else 1
    u8 = torch.randint(0, 256, (channels, 40, 36), dtype=torch.uint8)
    out = t(u8)
    assert out.shape == (channels, 28, 28) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    mode = "RGB" if channels == 3 else "L"
    pil = Image.fromarray(u8.permute(1, 2, 0).squeeze(-1).numpy(), mode)
    assert t(pil).shape == (channels, 28, 28)


def test_train_transforms_all_off_only_resizes():
    t = train_transforms(augment_off(), (16, 16))
    x = torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8)
    assert torch.allclose(t(x), x.float() / 255)


# --- normalisation --------------------------------------------------------------------------


def test_norm_stats_matches_torch():
    images = torch.randint(0, 256, (10, 3, 5, 7), dtype=torch.uint8)
    mean, std = norm_stats(images, chunk_elems=200)  # several chunks
    x = images.double() / 255
    want_mean = x.mean(dim=(0, 2, 3))
    want_std = x.transpose(0, 1).reshape(3, -1).std(dim=1)
    assert mean == pytest.approx(want_mean.tolist(), abs=1e-6)
    assert std == pytest.approx(want_std.tolist(), abs=1e-6)
    assert all(round(v, 6) == v for v in mean + std)


def test_normalize():
    x = torch.rand(2, 3, 4, 4)
    y = normalize(x, [0.1, 0.2, 0.3], [0.5, 0.25, 1.0])
    assert torch.allclose(y[:, 1], (x[:, 1] - 0.2) / 0.25)
    with pytest.raises(ValueError, match="3 channels"):
        normalize(x, [0.5], [0.5])


@pytest.mark.parametrize("domain,strength", PRESETS)
def test_drawn_parameters_replay_the_same_augmentation(domain, strength):
    """draw() then apply() (the CUDA-graph path) gives exactly what forward() gives."""
    aug = BatchAugment(augment_preset(domain, strength))
    channels = 1 if domain == "handwriting" else 3
    x = torch.rand(6, channels, 28, 28)
    params = aug.draw(tuple(x.shape), _gen(5))
    assert all(v.device.type == "cpu" and v.shape[0] == 6 for v in params.values())
    again = aug.draw(tuple(x.shape), _gen(5))
    assert [(k, v.shape) for k, v in params.items()] == [(k, v.shape) for k, v in again.items()]
    assert torch.equal(aug.apply(x, {k: v.float() for k, v in params.items()}), aug(x, _gen(5)))
