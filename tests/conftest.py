"""Shared fixtures: an isolated IMREC_HOME per test session and the real-data mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch  # the test modules import it anyway

REPO = Path(__file__).resolve().parents[1]
# The real datasets beside the checkout (``../shared/data``), unless the caller set a mirror.
MIRROR = Path(os.environ.get("IMREC_DATA_MIRROR") or REPO.parent / "shared" / "data")
# Under pytest-xdist (the Makefile's `-n 2`) the workers split the cores: with every worker
# training on all of them, OpenMP's threads fight over the cores and the suite is no faster
# than one process. OMP_NUM_THREADS carries the share to the commands the tests start.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if WORKERS > 1:
    from imrec.core.parallel import usable_cores

    _share = max(1, usable_cores() // WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_share)
    torch.set_num_threads(_share)
SESSION_THREADS = torch.get_num_threads()


@pytest.fixture(scope="session", autouse=True)
def _imrec_home(tmp_path_factory):
    """Keep the user's cache untouched: every test session gets its own IMREC_HOME."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # pytest-xdist's workers share one home (their base temp folders are siblings), so a
        # dataset is prepared once for the session: the cache writes each file atomically and
        # lets one process at a time make it (imrec.data.sources.one_at_a_time).
        home = tmp_path_factory.getbasetemp().parent / "imrec-home"
        home.mkdir(exist_ok=True)
    else:
        home = tmp_path_factory.mktemp("imrec-home")
    os.environ["IMREC_HOME"] = str(home)
    yield


@pytest.fixture(autouse=True)
def _torch_threads():
    """Every test ends with the session's torch thread count, as torch chose it at import: a
    test that ran a benchmark's main() or a model with one thread in this process must not
    leave the tests after it training on one core of two."""
    yield
    if torch.get_num_threads() != SESSION_THREADS:
        torch.set_num_threads(SESSION_THREADS)


def count_cpu_map(monkeypatch, module) -> list[int]:
    """Spy on ``module.cpu_map`` (as that module calls it): each call's item count is
    appended to the returned list, and the real map still does the work."""
    real = module.cpu_map
    calls: list[int] = []

    def spy(fn, items, **kwargs):
        items = list(items)
        calls.append(len(items))
        return real(fn, items, **kwargs)

    monkeypatch.setattr(module, "cpu_map", spy)
    return calls


@pytest.fixture
def mirror() -> Path:
    """The real-data mirror; tests that need real data are skipped with a reason without it."""
    if not (MIRROR / "mnist").is_dir():
        pytest.skip(f"no dataset mirror at {MIRROR} (set IMREC_DATA_MIRROR)")
    os.environ["IMREC_DATA_MIRROR"] = str(MIRROR)
    return MIRROR


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A tiny classifier on scikit-learn's 8x8 digits (no download), trained in seconds.

    Shared by the whole session: tests must only read it (copy it to change it).
    """
    import imrec

    out = tmp_path_factory.mktemp("runs") / "digits"
    imrec.fit("digits", train={"epochs": 2}, out=out, progress=False)
    return out


HANZI_TEN = "永中国人大小山水火木"
# Strokes alone: with the default renderers (auto) the run would also draw whatever CJK fonts the
# machine has, and its model, which tests measure, would differ from machine to machine.
HANZI_RUN_DATA = f"hanzi:chars={HANZI_TEN},train=60,val=4,test=8,size=32,renderers=strokes"


@pytest.fixture(scope="session")
def hanzi_run(tmp_path_factory) -> Path:
    """A 10-character ``hanzi`` model at 32 px (about 20 s on 2 cores), shared by the session:
    tests must only read it."""
    import imrec

    if not (MIRROR / "hanzi-writer-data").is_dir():
        pytest.skip(f"no hanzi-writer-data in the mirror at {MIRROR} (set IMREC_DATA_MIRROR)")
    os.environ["IMREC_DATA_MIRROR"] = str(MIRROR)
    out = tmp_path_factory.mktemp("runs") / "hanzi"
    imrec.fit(HANZI_RUN_DATA, out=out, train={"epochs": 10, "batch_size": 32}, progress=False)
    return out


def bar_folder(root: Path, per_class: int = 24) -> Path:
    """A ``folder:`` dataset of three classes of 16x16 grey PNGs told apart by a bright bar's
    position (left, middle, right) on dim noise: learnable in a few epochs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, cls in enumerate(("left", "middle", "right")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 160, (16, 16), np.uint8)  # a busy ground: not handwriting
            a[:, 2 + 5 * c : 5 + 5 * c] = 220
            Image.fromarray(a, "L").save(root / cls / f"{i}.png")
    return root
