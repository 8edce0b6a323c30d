"""What the ``>>>`` examples in the docstrings of src/imrec may use without defining it.

pytest runs those examples as tests (``--doctest-modules``, see pyproject.toml). Each one runs
in a new empty temporary folder, which is also its working directory, and may use these names:

- ``tmp``: that folder (a Path), for whatever the example writes;
- ``run``: the run folder of a small digit classifier (``imrec.fit("digits")``, a few seconds);
- ``bundle``: that run exported (``imrec export``), ``run / "bundle"``;
- ``digit``: a PNG file of a handwritten 0 from the test split of ``digits``;
- ``detect_run``: the run folder of a small ``tinydet`` detector on ``digits-detect`` scenes;
- ``coco128``: the COCO128 folder of the data mirror (COCO and YOLO annotations).

The last five are made once per session, when an example first names them, and must only be
read. Examples that need the data mirror (those naming ``detect_run``, ``coco128`` or a
``"digits-detect:..."`` dataset, whose scenes are made of MNIST digits) are skipped without it,
like the tests. Torch computes on one thread here: on a busy 2-core machine the tiny models of
the examples train many times faster that way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The real datasets beside the checkout (``../shared/data``), unless the caller set a mirror.
MIRROR = Path(os.environ.get("IMREC_DATA_MIRROR") or REPO.parent / "shared" / "data")
SHARED = ("run", "bundle", "digit", "detect_run", "coco128")
NEEDS_MIRROR = re.compile(r'\b(detect_run|coco128)\b|"digits-detect:')


@pytest.fixture(scope="package", autouse=True)
def _doctest_session(tmp_path_factory):
    """An IMREC_HOME of the examples' own, the mirror when there is one, and one torch thread
    (the home and the number of threads are restored after the examples, before any tests
    that follow)."""
    import torch

    home = os.environ.get("IMREC_HOME")
    os.environ["IMREC_HOME"] = str(tmp_path_factory.mktemp("imrec-home"))
    if (MIRROR / "mnist").is_dir():
        os.environ["IMREC_DATA_MIRROR"] = str(MIRROR)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    # Tests may follow in this process (pytest-xdist mixes the two): they get their own home.
    if home is None:
        os.environ.pop("IMREC_HOME", None)
    else:
        os.environ["IMREC_HOME"] = home


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace, tmp_path, monkeypatch):
    """Put ``tmp`` and the shared names the example uses into its namespace; run it in ``tmp``."""
    source = "".join(example.source for example in request.node.dtest.examples)
    if NEEDS_MIRROR.search(source) and not (MIRROR / "mnist").is_dir():
        pytest.skip(f"needs the dataset mirror at {MIRROR} (set IMREC_DATA_MIRROR)")
    monkeypatch.chdir(tmp_path)
    used = [name for name in SHARED if re.search(rf"\b{name}\b", source)]
    doctest_namespace.update(tmp=tmp_path, **{n: request.getfixturevalue(n) for n in used})
    yield
    for name in ("tmp", *used):
        doctest_namespace.pop(name, None)


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    import imrec

    out = tmp_path_factory.mktemp("runs") / "digits"
    return Path(imrec.fit("digits", out=out, progress=False)["run_dir"])


@pytest.fixture(scope="session")
def bundle(run) -> Path:
    from imrec.deploy.export import export_bundle

    return export_bundle(run)


@pytest.fixture(scope="session")
def digit(tmp_path_factory) -> Path:
    from PIL import Image

    from imrec.data import load_dataset

    test = load_dataset("digits").test
    path = tmp_path_factory.mktemp("images") / "digit.png"
    Image.fromarray(test.images[test.labels == 0][0, 0].numpy()).save(path)
    return path


@pytest.fixture(scope="session")
def detect_run(tmp_path_factory) -> Path:
    import imrec

    out = tmp_path_factory.mktemp("runs") / "digits-detect"
    name = "digits-detect:train=50,val=10,test=10"
    return Path(imrec.fit(name, train={"epochs": 1}, out=out, progress=False)["run_dir"])


@pytest.fixture(scope="session")
def coco128() -> Path:
    return MIRROR / "coco128"
