"""Pretrained torchvision weights by name, downloaded through torchvision into the torch hub cache.

``tv:<name>`` classifiers (``pretrained=IMAGENET1K_V1``) and the torchvision detectors
(``pretrained=DEFAULT``) accept the name of a member of the model's torchvision weights enum.
The file is fetched by the enum's own ``get_state_dict`` (``torch.hub.load_state_dict_from_url``)
into ``torch.hub.get_dir()/checkpoints`` and checked against the SHA-256 prefix in its name;
a file already there is used without a download. ``torch.hub`` writes to a temporary file and
moves it into place only after the hash check, so a failed download leaves nothing behind.
Anything else (``pretrained=weights.pth``) is a local state-dict file.

Example:
    >>> w = torchvision_weights("resnet18", "DEFAULT", what="tv:resnet18")
    >>> w.name, cache_path(w).name
    ('IMAGENET1K_V1', 'resnet18-f37072fd.pth')

Usage (downloads the file unless it is in the cache already)::

    state = download_state_dict(w, what="tv:resnet18")
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")


class WeightsUnavailableError(FileNotFoundError):
    """Named weights are not in the torch hub cache and could not be downloaded.

    ``url`` is where they come from and ``path`` where a copy fetched by hand can be put.
    """

    def __init__(self, message: str, *, url: str, path: Path):
        super().__init__(message)
        self.url, self.path = url, path

    def __str__(self) -> str:
        return str(self.args[0])


def is_weights_file(source: str) -> bool:
    """Whether ``pretrained=source`` means a local file rather than a weights name.

    Example:
        >>> is_weights_file("coco.pth"), is_weights_file("IMAGENET1K_V1")
        (True, False)
    """
    path = Path(source).expanduser()
    return path.suffix in WEIGHT_FILE_SUFFIXES or path.exists()


def torchvision_weights(builder: str, name: str, *, what: str):
    """The member ``name`` (``IMAGENET1K_V1``, ``DEFAULT``…) of torchvision builder's weights enum.

    Raises:
        ValueError: ``name`` is not one of them; the message lists the valid names.
    """
    import torchvision

    enum = torchvision.models.get_model_weights(builder)
    try:
        return enum[name]
    except KeyError:
        names = [w.name for w in enum] + (["DEFAULT"] if "DEFAULT" in enum.__members__ else [])
        raise ValueError(
            f"{what}: unknown pretrained weights {name!r}; valid: {', '.join(names)}, "
            f"or a path to a {'/'.join(WEIGHT_FILE_SUFFIXES)} state dict"
        ) from None


def cache_path(weights) -> Path:
    """Where ``torch.hub`` keeps (and looks for) the file of a torchvision weights entry."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def download_state_dict(
    weights, *, what: str, progress: bool = True, label: str = ""
) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights entry, downloaded into the hub cache if missing.

    Args:
        weights: a torchvision ``WeightsEnum`` member (see :func:`torchvision_weights`).
        what: the model, for messages (``tv:resnet18``).
        progress: show torch.hub's download message and progress bar (on stderr).
        label: the name the user gave (``DEFAULT``), for messages; default the member's name.

    Raises:
        WeightsUnavailableError: the file is not cached and the download failed (no network,
            an HTTP error, a hash mismatch); the message names the URL and the cache path.
        ValueError: the cached file is not a readable state dict.
    """
    path = cache_path(weights)
    label = label or weights.name
    # torch.hub announces a download on stdout; keep stdout for imrec's own output.
    where = sys.stderr if progress else io.StringIO()
    try:
        with contextlib.redirect_stdout(where):
            state = weights.get_state_dict(
                progress=progress, check_hash=True, map_location="cpu", weights_only=True
            )
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, hash mismatch, truncation...
        if not path.is_file():  # torch.hub deletes its partial file on any failure
            raise WeightsUnavailableError(
                f"{what}: pretrained weights {label} are not in the torch hub cache and "
                f"could not be downloaded ({e}); fetch {weights.url} and put it at {path} "
                f"(or pass pretrained=<path to a .pth/.safetensors state dict>)",
                url=weights.url,
                path=path,
            ) from e
        raise ValueError(
            f"{what}: {path} in the torch hub cache is not a readable state dict ({e}); "
            "delete it to download it again"
        ) from e
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {path} holds a {type(state).__name__}, not a state dict")
    return state
