"""Calibrated confidence and "unknown" answers.

After training, :func:`fit_confidence` fits a temperature ``T`` on the validation split
(probabilities are ``softmax(logits / T)`` everywhere: PyTorch, ONNX Runtime, int8, the
service) and sets a threshold on an out-of-distribution score so that a stated share of the
validation images is accepted (default 99%). An image whose score falls below it is answered
``"unknown": true`` with its candidates; a blank image is ``"blank": true`` and unknown.

Scores (higher = more like the training data), computed from the logits of the same forward
pass, so every backend computes them the same way:

- ``msp``: the largest calibrated probability (Hendrycks & Gimpel, 2017);
- ``energy``: ``T * logsumexp(logits / T)`` (Liu et al., 2020), which keeps the logits' scale
  that the softmax throws away.

The threshold is stored with a table of the validation scores' quantiles, so that another
acceptance rate (``accept_rate``) maps to its threshold without the data. ``msp`` is the
default because it never fails badly: on the MNIST model ``energy`` separated Fashion-MNIST,
Chars74K letters and Chinese MNIST a little better (AUROC 0.837 / 0.946 / 0.992 against 0.812 /
0.931 / 0.986), but on the 3,755-class hanzi model it ranked MNIST digits and letters as *more*
familiar than its own characters (AUROC 0.415 and 0.255, where ``msp`` gets 0.961 and 0.879;
BENCHMARKS.md "Unknown answers").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

SCORES = ("msp", "energy")
DEFAULT_SCORE = "msp"
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

    def meta(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict | None) -> Confidence | None:
        """The stored rule, or None for a model trained before calibration existed."""
        if not meta:
            return None
        return cls(**{k: meta[k] for k in cls.__dataclass_fields__})

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


def scores(logits: torch.Tensor, temperature: float, kind: str) -> torch.Tensor:
    """The out-of-distribution score of each row of ``logits`` ``(N, K)``: ``(N,)``, higher
    = more like the training data.

    Example:
        >>> z = torch.tensor([[4.0, 0.0], [0.0, 0.1]])
        >>> [round(v, 3) for v in scores(z, 1.0, "msp").tolist()]
        [0.982, 0.525]
    """
    z = logits.float() / temperature
    if kind == "msp":
        return z.softmax(1).max(1).values
    if kind == "energy":
        return temperature * torch.logsumexp(z, 1)
    raise ValueError(f"unknown confidence score {kind!r}; choose one of {', '.join(SCORES)}")


def fit_confidence(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    score: str = DEFAULT_SCORE,
    accept_rate: float = DEFAULT_ACCEPT,
    fitted_on: str = "validation split",
) -> Confidence:
    """Temperature and threshold from held-out ``logits`` ``(N, K)`` and their ``labels``."""
    check_accept_rate(accept_rate)
    if score not in SCORES:
        raise ValueError(f"unknown confidence score {score!r}; choose one of {', '.join(SCORES)}")
    temperature = fit_temperature(logits, labels)
    s = scores(logits, temperature, score).double()
    table = torch.quantile(s, torch.linspace(0, 1, QUANTILES, dtype=torch.float64))
    quantiles = [round(float(v), 6) for v in table]
    q = np.linspace(0.0, 1.0, QUANTILES)
    threshold = float(np.interp(1.0 - accept_rate, q, quantiles))
    return Confidence(temperature, score, threshold, accept_rate, quantiles, fitted_on)


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
    accept_rate: float | None = None,
    reject: bool = True,
) -> tuple[torch.Tensor, list[dict]]:
    """Calibrated probabilities ``(N, K)`` and, per image, ``{"score", "unknown", "blank"}``
    (``score`` is None for a model without calibration, which then rejects only blanks)."""
    temperature = confidence.temperature if confidence else 1.0
    probs = (logits.float() / temperature).softmax(1)
    empty = blank(images).tolist()
    if confidence is None:
        return probs, [{"score": None, "unknown": e, "blank": e} for e in empty]
    s = scores(logits, temperature, confidence.score).tolist()
    threshold = confidence.threshold_for(accept_rate)
    out = [
        {"score": round(v, 6), "unknown": e or (reject and v < threshold), "blank": e}
        for v, e in zip(s, empty, strict=True)
    ]
    return probs, out
