"""The built-in classifiers: ``mlp``, ``cnn``, ``resnet`` (+ ``resnet18``/``resnet20``), ``inception``.

Every builder takes ``num_classes``, ``in_channels`` and ``input_size`` plus keyword options
whose defaults (and their types) define what ``create_model`` accepts. All of them return a
:class:`~imrec.models.base.Classifier` that works for any input from 8×8 up to 224×224:
spatial stages that would shrink the map below a few pixels are skipped, and the features
end in global average pooling (a cnn with ``neck=N`` instead flattens its last map, and so
takes only the input size it was built for).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imrec.models.base import Classifier
from imrec.models.registry import register_model

# ---- shared pieces -------------------------------------------------------------------------


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, BN follows) -> BatchNorm -> ReLU.

    Example:
        >>> conv_bn_relu(1, 8)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 8, 8, 8])
    """
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PooledFeatures(nn.Module):
    """Spatial features -> global average pool -> optional dropout: ``(B, C)``."""

    def __init__(self, features: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.features = features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, h, w)
        return self.dropout(x.mean(dim=(2, 3)))  # (B, C)


class GridNeck(nn.Module):
    """Spatial features -> flattened as they lie -> ``Linear(C·h·w, width)``, BN, ReLU, dropout.

    Where global average pooling keeps what was found and forgets where, the neck keeps
    where: for a Chinese character whether a component sits left or right, above or below.
    It is built for one input size (its ``h × w`` map), costs ``C·h·w·width`` multiply-adds
    an image (0.6 M for the hanzi network's 3×3×256 map into 256 against its convs' ~41 M) and
    as many parameters.
    """

    def __init__(
        self,
        features: nn.Module,
        channels: int,
        hw: tuple[int, int],
        width: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.features = features
        self.hw = hw
        self.fc = nn.Linear(channels * hw[0] * hw[1], width, bias=False)
        self.bn = nn.BatchNorm1d(width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, h, w)
        if tuple(x.shape[2:]) != self.hw:
            raise ValueError(
                f"cnn neck: built for a {self.hw[0]}x{self.hw[1]} feature map, got "
                f"{tuple(x.shape[2:])}: the input is not the size the model was built for"
            )
        x = F.relu(self.bn(self.fc(x.flatten(1))))  # (B, width)
        return self.dropout(x)


def _check_dropout(model: str, dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{model}: dropout must be in [0, 1), got {dropout}")


def _check_positive(model: str, **values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{model}: {key} must be > 0, got {value}")


# ---- mlp -----------------------------------------------------------------------------------


@register_model("mlp", "the tutorial MLP: flatten -> Linear(hidden) -> ReLU -> Dropout -> head")
def mlp(
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    hidden: int = 64,
    dropout: float = 0.2,
) -> Classifier:
    """The beginners' tutorial model; needs the exact input size it was built for.

    Example:
        >>> m = mlp(num_classes=10, in_channels=1, input_size=(28, 28))
        >>> sum(p.numel() for p in m.parameters())
        50890
    """
    _check_positive("mlp", hidden=hidden)
    _check_dropout("mlp", dropout)
    h, w = input_size
    backbone = nn.Sequential(
        nn.Flatten(),  # (B, C*H*W)
        nn.Linear(in_channels * h * w, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    )
    return Classifier(backbone, hidden, num_classes, cam_layer=None)


# ---- cnn -----------------------------------------------------------------------------------

# size -> (channel multipliers of ``width`` per stage, convs per stage)
_CNN_SIZES = {
    "s": ((0.75, 1, 2, 4), (1, 1, 1, 1)),
    "m": ((1, 2, 4, 8), (2, 2, 2, 2)),
    # six convs at about the cost of s's four: narrower, with the two small maps doubled
    "d": ((0.5, 0.75, 1.5, 3), (1, 1, 2, 2)),
}


class CnnStage(nn.Module):
    """``convs`` 3×3 convs, then (when ``pool``) a 2×2 max-pool, BN and ReLU.

    Pooling right after the conv, before BN and ReLU, does the element-wise work on a
    4× smaller map: on a 2-core CPU those memory-bound ops cost as much as the convs.
    With ``strided`` a pooling stage halves the map with its last conv (stride 2) instead:
    that conv computes a quarter of the outputs, so it costs 4× fewer multiply-adds.
    """

    def __init__(self, cin: int, cout: int, convs: int, pool: bool, strided: bool = False):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(cin, cout) for _ in range(convs - 1)]
        cin = cout if convs > 1 else cin
        stride = 2 if pool and strided else 1
        layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False))
        # An Identity keeps the parameter names the same with or without pooling, so weights
        # move between input sizes (a 28 px MNIST model fine-tunes a 64 px Chinese MNIST one).
        layers.append(nn.MaxPool2d(2) if pool and not strided else nn.Identity())
        layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SpaceToDepth(nn.PixelUnshuffle):
    """``nn.PixelUnshuffle`` that first pads the bottom and right edges with zeros up to a
    multiple of the factor, so a map of any size goes through (100×37 at factor 4: 25×10)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.downscale_factor
        pad_h, pad_w = -x.shape[-2] % f, -x.shape[-1] % f
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return super().forward(x)


def _stem_factor(side: int) -> int:
    """Space-to-depth factor for the stem: start the convs at a smaller map when it is big."""
    if side >= 96:
        return 4
    return 2 if side >= 16 else 1


@register_model(
    "cnn", "fast BatchNorm CNN (default for 28..64 px); size=s|m|d, width, dropout, neck, strided"
)
def cnn(
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    size: str = "s",
    width: int = 32,
    dropout: float = 0.1,
    neck: int = 0,
    strided: int = 0,
) -> Classifier:
    """A small, fast CNN: pixel-unshuffle stem, four conv stages, global average pooling.

    ``size="s"`` has one conv per stage (``width``·¾/1/2/4 channels: 24-32-64-128 by default),
    ``"m"`` two convs per stage and ``width``·1/2/4/8 channels, ``"d"`` six convs at about
    ``"s"``'s cost at 48 px (``width``·½/¾/1½/3 channels, two convs in each of the last two
    stages). Stages 2-4 end in a 2×2 max-pool while the map stays at least 3 px wide (28 px:
    14 -> 7 -> 3). ``neck=N`` replaces the global average pooling with a :class:`GridNeck` of
    ``N`` features (the last map flattened where it lies; the model then takes only its own
    input size). ``strided=N``: the first ``N`` stages that halve the map do it with a
    stride-2 conv instead of a max-pool after it (the costliest stage of ``"s"`` at 4× fewer
    multiply-adds).

    Example:
        >>> m = cnn(num_classes=10, in_channels=1, input_size=(28, 28))
        >>> m(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    if size not in _CNN_SIZES:
        raise ValueError(f"cnn: size must be one of {sorted(_CNN_SIZES)}, got {size!r}")
    _check_positive("cnn", width=width)
    _check_dropout("cnn", dropout)
    if neck < 0:
        raise ValueError(f"cnn: neck must be >= 0 (0: global average pooling), got {neck}")
    if strided < 0:
        raise ValueError(f"cnn: strided must be >= 0 (0: every stage max-pools), got {strided}")
    mults, convs = _CNN_SIZES[size]
    factor = _stem_factor(min(input_size))
    # Space-to-depth: (B, C, H, W) -> (B, C·f², ⌈H/f⌉, ⌈W/f⌉) costs nothing and shrinks every map.
    layers: list[nn.Module] = [SpaceToDepth(factor)] if factor > 1 else []
    cin, hw = (
        in_channels * factor * factor,
        (-(-input_size[0] // factor), -(-input_size[1] // factor)),
    )
    halved = 0
    for i, (mult, n) in enumerate(zip(mults, convs, strict=True)):
        cout = max(1, round(width * mult))
        pool = i > 0 and min(hw) // 2 >= 3  # the first stage keeps its resolution
        stride = pool and halved < strided
        halved += pool
        layers.append(CnnStage(cin, cout, n, pool, stride))
        if stride:  # a stride-2 conv with padding 1 rounds up where a max-pool rounds down
            hw = (-(-hw[0] // 2), -(-hw[1] // 2))
        else:
            hw = (hw[0] // 2, hw[1] // 2) if pool else hw
        cin = cout
    features = nn.Sequential(*layers)
    if neck:
        return Classifier(
            GridNeck(features, cin, hw, neck, dropout), neck, num_classes, cam_layer=layers[-1]
        )
    return Classifier(PooledFeatures(features, dropout), cin, num_classes, cam_layer=layers[-1])


# ---- resnet --------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a shortcut (1×1 conv-BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, cout, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


# ImageNet-style depths (basic blocks per stage); CIFAR-style depths are 6n+2.
_IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _resnet_stem(cin: int, cout: int, side: int) -> nn.Sequential:
    """7×7/2 conv + max-pool for ≥96 px, a 3×3/2 conv for 48..95 px, a plain 3×3 below."""
    if side >= 96:
        return nn.Sequential(conv_bn_relu(cin, cout, 7, 2), nn.MaxPool2d(3, 2, 1))
    return conv_bn_relu(cin, cout, 3, 2 if side >= 48 else 1)


def _resnet_layout(depth: int, side: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(blocks per stage, base channels per stage)`` for a depth (0 = by input size)."""
    if depth == 0:
        depth = 18 if side >= 96 else 20
    if depth in _IMAGENET_BLOCKS:
        return _IMAGENET_BLOCKS[depth], (64, 128, 256, 512)
    if depth >= 8 and (depth - 2) % 6 == 0:
        n = (depth - 2) // 6
        return (n, n, n), (16, 32, 64)
    raise ValueError(
        f"resnet: depth must be 18 or 34 (ImageNet-style) or 6n+2 such as 20, 32, 56, 110 "
        f"(CIFAR-style), or 0 for automatic; got {depth}"
    )


def _build_resnet(
    num_classes: int, in_channels: int, input_size: tuple[int, int], depth: int, width: float
) -> Classifier:
    _check_positive("resnet", width=width)
    side = min(input_size)
    blocks, channels = _resnet_layout(depth, side)
    channels = tuple(max(1, round(c * width)) for c in channels)
    stem = _resnet_stem(in_channels, channels[0], side)
    side = side // 4 if side >= 96 else side // 2 if side >= 48 else side
    stages, cin = [], channels[0]
    for i, (n, cout) in enumerate(zip(blocks, channels, strict=True)):
        # Downsample at each later stage while the map stays at least 2 px wide.
        stride = 2 if i > 0 and side >= 4 else 1
        side //= stride
        stages.append(
            nn.Sequential(
                *(
                    BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                    for j in range(n)
                )
            )
        )
        cin = cout
    features = nn.Sequential(stem, *stages)
    return Classifier(PooledFeatures(features), cin, num_classes, cam_layer=stages[-1])


@register_model("resnet", "residual net with BN; depth 20/32/56 (CIFAR) or 18/34, width multiplier")
def resnet(
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    depth: int = 0,
    width: float = 1.0,
) -> Classifier:
    """ResNet: CIFAR-style (16/32/64 channels, depth 6n+2) or ImageNet-style (depth 18/34).

    ``depth=0`` picks resnet20 below 96 px and resnet18 (7×7 stem) from 96 px on.

    Example:
        >>> m = resnet(num_classes=10, in_channels=3, input_size=(32, 32))
        >>> m(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return _build_resnet(num_classes, in_channels, input_size, depth, width)


@register_model("resnet18", "ResNet-18 (basic blocks 2-2-2-2); small stem below 96 px")
def resnet18(
    *, num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0
) -> Classifier:
    """ResNet-18 for any input size (same as ``resnet`` with ``depth=18``).

    Example:
        >>> resnet18(num_classes=3, in_channels=1, input_size=(28, 28)).num_features
        512
    """
    return _build_resnet(num_classes, in_channels, input_size, 18, width)


@register_model("resnet20", "CIFAR-style ResNet-20 (16/32/64 channels, 0.27 M parameters)")
def resnet20(
    *, num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0
) -> Classifier:
    """ResNet-20 (same as ``resnet`` with ``depth=20``).

    Example:
        >>> resnet20(num_classes=10, in_channels=3, input_size=(32, 32)).num_features
        64
    """
    return _build_resnet(num_classes, in_channels, input_size, 20, width)


# ---- inception -----------------------------------------------------------------------------


class InceptionModule(nn.Module):
    """Four parallel branches, concatenated: 1×1 | 1×1→3×3 | 1×1→3×3→3×3 | pool→1×1.

    The double 3×3 branch sees a 5×5 neighbourhood at lower cost than a 5×5 conv.
    Each branch yields ``cout // 4`` channels.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        b, r = cout // 4, max(cout // 8, 8)  # branch width, bottleneck width
        self.b1 = conv_bn_relu(cin, b, 1)
        self.b3 = nn.Sequential(conv_bn_relu(cin, r, 1), conv_bn_relu(r, b))
        self.b5 = nn.Sequential(conv_bn_relu(cin, r, 1), conv_bn_relu(r, b), conv_bn_relu(b, b))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_relu(cin, b, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.b1(x), self.b3(x), self.b5(x), self.bp(x))  # each (B, cout/4, H, W)
        return torch.cat(branches, dim=1)  # (B, cout, H, W)


@register_model("inception", "Inception-style net: parallel 1x1/3x3/5x5/pool branches; width")
def inception(
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    width: int = 32,
    dropout: float = 0.2,
) -> Classifier:
    """Conv stem, then three Inception modules (2·, 4·, 4·``width`` channels) with pooling.

    Example:
        >>> m = inception(num_classes=10, in_channels=1, input_size=(28, 28))
        >>> m(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    _check_positive("inception", width=width)
    _check_dropout("inception", dropout)
    if width < 8:
        raise ValueError(f"inception: width must be at least 8, got {width}")
    side = min(input_size)
    stem_stride = 2 if side >= 96 else 1
    layers: list[nn.Module] = [conv_bn_relu(in_channels, width, 3, stem_stride)]
    side //= stem_stride
    cin = width
    for cout in (2 * width, 4 * width, 4 * width):
        if side // 2 >= 3:  # pool before each module while the map stays ≥ 3 px
            layers.append(nn.MaxPool2d(2))
            side //= 2
        layers.append(InceptionModule(cin, cout))
        cin = cout
    features = nn.Sequential(*layers)
    return Classifier(PooledFeatures(features, dropout), cin, num_classes, cam_layer=layers[-1])
