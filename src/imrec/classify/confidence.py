"""Calibrated confidence and "unknown" answers.

After training, :func:`fit_confidence` fits a temperature ``T`` on the validation split
(probabilities are ``softmax(logits / T)`` everywhere: PyTorch, ONNX Runtime, int8, the
service) and sets a threshold on an out-of-distribution score so that a stated share of the
validation images is accepted (default 99%). An image whose score falls below it is answered
``"unknown": true`` with its candidates; a blank image is ``"blank": true`` and unknown.

Scores (higher = more like the training data), computed from the outputs of the same forward
pass, so every backend computes them the same way:

- ``msp``: the largest calibrated probability (Hendrycks & Gimpel, 2017);
- ``energy``: ``T * logsumexp(logits / T)`` (Liu et al., 2020), which keeps the logits' scale
  that the softmax throws away;
- ``mahalanobis``: minus the smallest squared Mahalanobis distance of the penultimate features
  to the class centres, with one covariance shared by all classes (Lee et al., 2018), both
  fitted on training images (:func:`fit_distance`). The distance is a second output of the
  graph (``distance``, computed by :class:`Distance` inside the exported ONNX model), so
  ONNX Runtime, int8 and PyTorch compute it alike;
- ``energy+maha``: ``min(z(energy) + 0.5 z(mahalanobis), z(mahalanobis) + 2)``, each part
  standardised by its mean and spread on the validation split: one score that sees the
  logits and one that sees the features, and the features alone cap it, so an image whose
  features are far from every class is unknown however large its logits (random noise makes
  large logits). The weight 0.5 and the cap 2 were chosen on generated images only (random
  scribbles and noise, BENCHMARKS.md "Unknown answers"): a larger weight lets scribbles
  through, a smaller one or no cap lets noise through on some seeds.

The threshold is stored with a table of the validation scores' quantiles, so that another
acceptance rate (``accept_rate``) maps to its threshold without the data.

The default (:func:`default_score`) is ``energy+maha`` for models of up to
:data:`COMBINED_MAX_CLASSES` classes and ``msp`` above, and ``msp`` for a model trained with
outlier exposure (which teaches the logits what is foreign; its features then stop telling
noise from digits: Mahalanobis AUROC 0.41 against noise on the exposed MNIST model). Measured (BENCHMARKS.md "Unknown
answers"): on the MNIST model ``energy+maha`` separates Fashion-MNIST, Chars74K letters and
Chinese MNIST with AUROC 0.992 / 0.977 / 0.986 where ``msp`` gets 0.812 / 0.931 / 0.986, and it
is the best or within 0.006 of the best on the Chinese MNIST model too; but on the 3,755-class
hanzi model energy and Mahalanobis both rank MNIST digits and letters as *more* familiar than
its own characters (AUROC 0.415 / 0.174 against digits), where ``msp`` gets 0.961: ``msp``
never fails badly, so it is the rule for large vocabularies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

SCORES = ("msp", "energy", "mahalanobis", "energy+maha")
FEATURE_SCORES = ("mahalanobis", "energy+maha")  # need the graph's ``distance`` output
DEFAULT_SCORE = "msp"  # for large vocabularies, and models without feature statistics
COMBINED_MAX_CLASSES = 100  # up to this many classes the default is energy+maha
FEATURE_IMAGES = 10_000  # training images the class centres and covariance are fitted on
MAHA_WEIGHT = 0.5  # energy+maha = min(z(energy) + MAHA_WEIGHT * z(maha), z(maha) + MAHA_CAP)
MAHA_CAP = 2.0
DEFAULT_ACCEPT = 0.99
QUANTILES = 201  # points of the stored table of validation scores (every 0.5%)
BLANK_RANGE = 16  # a prepared image whose grey levels span less than this is blank


@dataclass(frozen=True)
class Confidence:
    """A model's calibration and rejection rule (stored in checkpoints and bundles).

    Example:
        >>> c = Confidence(temperature=1.5, score="msp", threshold=0.4, accept_rate=0.99,
        ...                quantiles=[0.1, 0.4, 0.9], fitted_on="val")
        >>> Confidence.from_meta(c.meta()) == c
        True
    """

    temperature: float
    score: str
    threshold: float
    accept_rate: float
    quantiles: list[float]  # the validation scores at 0, 1/(Q-1), ..., 1
    fitted_on: str
    # energy+maha: {"energy": [mean, std], "mahalanobis": [mean, std]} on the fitting images,
    # "weights": [energy's, mahalanobis's], "cap": [c] (the score <= z(mahalanobis) + c)
    standardise: dict[str, list[float]] | None = None
    # the feature statistics in the checkpoint (extras "whitener", "centres"): how they were fitted
    features: dict | None = None

    def meta(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict | None) -> Confidence | None:
        """The stored rule, or None for a model trained before calibration existed."""
        if not meta:
            return None
        return cls(**{k: meta[k] for k in cls.__dataclass_fields__ if k in meta})

    def score_of(self, logits: torch.Tensor, distance: torch.Tensor | None = None) -> torch.Tensor:
        """This rule's score ``(N,)`` of a batch's logits ``(N, K)`` (and ``distance`` ``(N,)``,
        the graph's second output, for the feature scores)."""
        return scores(logits, self.temperature, self.score, distance, self.standardise)

    def threshold_for(self, accept_rate: float | None) -> float:
        """The score threshold that accepts ``accept_rate`` of the validation images (the
        stored one for None), interpolated in the quantile table.

        Example:
            >>> c = Confidence(1.0, "msp", 0.5, 0.5, [0.0, 0.5, 1.0], "val")
            >>> c.threshold_for(0.75), c.threshold_for(None)
            (0.25, 0.5)
        """
        if accept_rate is None:
            return self.threshold
        check_accept_rate(accept_rate)
        q = np.linspace(0.0, 1.0, len(self.quantiles))
        return float(np.interp(1.0 - accept_rate, q, self.quantiles))


def check_accept_rate(accept_rate: float) -> None:
    """Refuse an acceptance rate outside (0, 1]."""
    if not (isinstance(accept_rate, (int, float)) and 0.0 < accept_rate <= 1.0):
        raise ValueError(
            f"accept rate must be in (0, 1] (the share of in-distribution images accepted), "
            f"got {accept_rate!r}"
        )


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` that minimises the negative log-likelihood of
    ``softmax(logits / T)`` on held-out data (a 1-D search over ``log T``).

    Example (logits twice too confident):
        >>> g = torch.Generator().manual_seed(0)
        >>> true = torch.randn(4000, 5, generator=g) * 2
        >>> labels = torch.multinomial(true.softmax(1), 1, generator=g)[:, 0]
        >>> abs(fit_temperature(true * 2, labels) - 2.0) < 0.15
        True
    """
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = math.log(0.05), math.log(20.0)
    golden = (math.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):  # golden-section search: NLL is unimodal in log T
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(b)
    return round(math.exp((lo + hi) / 2), 4)


def default_score(num_classes: int, features: bool, exposed: bool = False) -> str:
    """The score a model gets when none is asked for: ``energy+maha`` for up to
    :data:`COMBINED_MAX_CLASSES` classes when its feature statistics exist and it was not
    trained with outlier exposure (``exposed``), else ``msp``.

    Example:
        >>> default_score(10, True), default_score(3755, True), default_score(10, False)
        ('energy+maha', 'msp', 'msp')
        >>> default_score(10, True, exposed=True)
        'msp'
    """
    if features and not exposed and num_classes <= COMBINED_MAX_CLASSES:
        return "energy+maha"
    return DEFAULT_SCORE


def check_score(kind: str) -> None:
    """Refuse a score name that is not one of :data:`SCORES`."""
    if kind not in SCORES:
        raise ValueError(f"unknown confidence score {kind!r}; choose one of {', '.join(SCORES)}")


def scores(
    logits: torch.Tensor,
    temperature: float,
    kind: str,
    distance: torch.Tensor | None = None,
    standardise: dict[str, list[float]] | None = None,
) -> torch.Tensor:
    """The out-of-distribution score of each row of ``logits`` ``(N, K)``: ``(N,)``, higher
    = more like the training data. ``distance`` ``(N,)``: the smallest squared Mahalanobis
    distance of each image's features (:class:`Distance`), for ``mahalanobis`` and
    ``energy+maha``; ``standardise``: the means and spreads that ``energy+maha`` divides by,
    and its two weights.

    Example:
        >>> z = torch.tensor([[4.0, 0.0], [0.0, 0.1]])
        >>> [round(v, 3) for v in scores(z, 1.0, "msp").tolist()]
        [0.982, 0.525]
        >>> d = torch.tensor([10.0, 90.0])
        >>> both = {"energy": [2.0, 1.0], "mahalanobis": [-20.0, 10.0], "weights": [1.0, 0.5],
        ...         "cap": [2.0]}
        >>> [round(v, 3) for v in scores(z, 1.0, "energy+maha", d, both).tolist()]
        [2.518, -5.0]
    """
    check_score(kind)
    z = logits.float() / temperature
    if kind == "msp":
        return z.softmax(1).max(1).values
    energy = temperature * torch.logsumexp(z, 1)
    if kind == "energy":
        return energy
    if distance is None:
        raise ValueError(
            f"the {kind} score needs the model's feature distance (the graph's 'distance' "
            "output); this model gives only logits: calibrate it again (imrec calibrate RUN)"
        )
    maha = -distance.float().reshape(-1)
    if kind == "mahalanobis":
        return maha
    if not standardise:
        raise ValueError("energy+maha needs the means and spreads it was standardised with")
    (me, se), (mm, sm) = standardise["energy"], standardise["mahalanobis"]
    we, wm = standardise["weights"]
    z_maha = (maha - mm) / sm
    return torch.minimum(we * (energy - me) / se + wm * z_maha, z_maha + standardise["cap"][0])


class Distance(nn.Module):
    """The smallest squared Mahalanobis distance of features to the class centres: ``(B, D)``
    -> ``(B,)``, with one covariance shared by all classes.

    ``whitener`` ``(D, D)`` is a factor ``L`` of the precision matrix (``P = L L^T``) and
    ``centres`` ``(K, D)`` are the class means times ``L``, so the distance to class ``k`` is
    ``|f L - c_k|^2``; it is part of the exported graph (plain MatMul, ReduceMin).

    Example:
        >>> d = Distance(torch.eye(2), torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        >>> d(torch.tensor([[3.0, 3.0], [0.0, 1.0]])).tolist()
        [1.0, 1.0]
    """

    def __init__(self, whitener: torch.Tensor, centres: torch.Tensor):
        super().__init__()
        self.register_buffer("whitener", whitener.float())
        self.register_buffer("centres_t", centres.float().T.contiguous())  # (D, K)
        self.register_buffer("centres_sq", (centres.float() ** 2).sum(1))  # (K,)

    @classmethod
    def from_extras(cls, extras: dict[str, torch.Tensor] | None) -> Distance | None:
        """The distance a checkpoint's extras hold (``whitener``, ``centres``, as
        :func:`fit_distance` returns them), None when they hold none."""
        extras = extras or {}
        if not {"whitener", "centres"} <= extras.keys():
            return None
        return cls(extras["whitener"], extras["centres"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        g = features.float() @ self.whitener  # (B, D) whitened
        d = (g * g).sum(1, keepdim=True) - 2 * (g @ self.centres_t) + self.centres_sq  # (B, K)
        return d.min(1).values.clamp(min=0.0)


def fit_distance(features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The checkpoint extras of :class:`Distance` fitted on training ``features`` ``(N, D)``
    and their ``labels``: ``{"whitener": (D, D), "centres": (K, D)}`` (classes absent from
    the sample have no centre). The shared covariance gets a ridge of 1e-4 of its mean
    variance, so a feature that never varies in training still has a finite precision.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> f = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5])
        >>> labels = torch.arange(4000) % 2
        >>> f[labels == 1] += 10
        >>> stats = fit_distance(f, labels)
        >>> d = Distance(**stats)(torch.tensor([[0.0, 0.0, 0.0], [10.0, 10.0, 11.0]]))
        >>> [round(v) for v in d.tolist()]  # the second: 1 / 0.5^2 from its centre
        [0, 4]
    """
    f, labels = features.double(), labels.long()
    present = torch.unique(labels)
    means = torch.stack([f[labels == c].mean(0) for c in present])  # (K', D)
    centred = f - means[torch.searchsorted(present, labels)]
    cov = centred.T @ centred / len(f)
    ridge = 1e-4 * max(float(cov.diagonal().mean()), 1e-12)
    cov = cov + ridge * torch.eye(f.shape[1], dtype=torch.float64)
    precision = torch.linalg.inv(cov)
    precision = (precision + precision.T) / 2
    whitener = torch.linalg.cholesky(precision)  # P = L L^T
    return {"whitener": whitener.float(), "centres": (means @ whitener).float()}


def fit_confidence(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    distance: torch.Tensor | None = None,
    score: str | None = None,
    accept_rate: float = DEFAULT_ACCEPT,
    fitted_on: str = "validation split",
    features: dict | None = None,
    exposed: bool = False,
) -> Confidence:
    """Temperature and threshold from held-out ``logits`` ``(N, K)`` and their ``labels``
    (``distance`` ``(N,)``: their feature distances, for the feature scores; ``score`` None:
    :func:`default_score`, ``exposed``: the model was trained with outlier exposure;
    ``features``: how the feature statistics were fitted, stored as is).
    """
    check_accept_rate(accept_rate)
    if score is None:
        score = default_score(logits.shape[1], distance is not None, exposed)
    check_score(score)
    if score in FEATURE_SCORES and distance is None:
        raise ValueError(
            f"the {score} score needs feature statistics, which this model does not have yet: "
            "calibrate it on its own dataset first (imrec calibrate RUN)"
        )
    temperature = fit_temperature(logits, labels)
    standardise = None
    if distance is not None:
        parts = {"energy": scores(logits, temperature, "energy"), "mahalanobis": -distance}
        standardise = {
            k: [round(float(v.double().mean()), 6), round(max(float(v.double().std()), 1e-6), 6)]
            for k, v in parts.items()
        }
        standardise["weights"], standardise["cap"] = [1.0, MAHA_WEIGHT], [MAHA_CAP]
    s = scores(logits, temperature, score, distance, standardise).double()
    table = torch.quantile(s, torch.linspace(0, 1, QUANTILES, dtype=torch.float64))
    quantiles = [round(float(v), 6) for v in table]
    q = np.linspace(0.0, 1.0, QUANTILES)
    threshold = float(np.interp(1.0 - accept_rate, q, quantiles))
    return Confidence(
        temperature, score, threshold, accept_rate, quantiles, fitted_on, standardise,
        features if distance is not None else None,
    )  # fmt: skip


def blank(images: torch.Tensor) -> torch.Tensor:
    """Which prepared uint8 images ``(N, C, H, W)`` are blank or nearly constant: ``(N,)``
    bools (a clean canvas, an empty page; the handwriting form of an image without ink is
    all black).

    Example:
        >>> x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8); x[1, 0, 2:6, 3] = 255
        >>> blank(x).tolist()
        [True, False]
    """
    flat = images.reshape(len(images), -1)
    spread = flat.max(1).values.int() - flat.min(1).values.int()
    return spread < BLANK_RANGE


def decide(
    logits: torch.Tensor,
    images: torch.Tensor,
    confidence: Confidence | None,
    *,
    distance: torch.Tensor | None = None,
    accept_rate: float | None = None,
    reject: bool = True,
) -> tuple[torch.Tensor, list[dict]]:
    """Calibrated probabilities ``(N, K)`` and, per image, ``{"score", "unknown", "blank"}``
    (``score`` is None for a model without calibration, which then rejects only blanks;
    ``distance``: the graph's second output, which the feature scores need)."""
    temperature = confidence.temperature if confidence else 1.0
    probs = (logits.float() / temperature).softmax(1)
    empty = blank(images).tolist()
    if confidence is None:
        return probs, [{"score": None, "unknown": e, "blank": e} for e in empty]
    s = confidence.score_of(logits, distance).tolist()
    threshold = confidence.threshold_for(accept_rate)
    out = [
        {"score": round(v, 6), "unknown": e or (reject and v < threshold), "blank": e}
        for v, e in zip(s, empty, strict=True)
    ]
    return probs, out
