"""Pretrained weights by name, downloaded for real: torchvision's own mechanism (torch.hub) fetches
a small state dict over HTTP from a server on loopback into a temporary torch hub cache.

The model's torchvision weights enum is swapped for one whose entries point at that server;
everything after the name lookup (download, hash check, cache, errors) is the real code.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import Weights, WeightsEnum

from imrec.cli import main
from imrec.models import create_model
from imrec.models.detectors import create_detector
from imrec.models.weights import WeightsUnavailableError

CLASSIFIER = "mobilenet_v3_small"  # tv:mobilenet_v3_small, 2.5 M parameters
DETECTOR, DETECTOR_BUILDER = "ssdlite", "ssdlite320_mobilenet_v3_large"  # the smallest one


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1 that counts the requests it gets."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_Handler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests, httpd.folder = [], folder
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """A fresh torch hub cache; returns its ``checkpoints`` folder (not created yet)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def _serve(folder: Path, stem: str, state: dict, *, corrupt: bool = False) -> str:
    """Save ``state`` as ``<stem>-<sha256 prefix>.pth`` under ``folder``; returns the file name.

    ``corrupt`` serves other bytes under the same name, so the hash in the name does not fit.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    name = f"{stem}-{hashlib.sha256(data).hexdigest()[:10]}.pth"
    (folder / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if corrupt else data)
    return name


def _point(monkeypatch, builder: str, url: str) -> None:
    """Make ``builder``'s torchvision weights enum one entry at ``url``: TEST, alias DEFAULT."""
    entry = Weights(url=url, transforms=None, meta={})
    enum = WeightsEnum(f"Served_{builder}", [("TEST", entry), ("DEFAULT", entry)])
    real = torchvision.models.get_model_weights
    monkeypatch.setattr(
        torchvision.models,
        "get_model_weights",
        lambda name: enum if name == builder else real(name),
    )


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def _classifier_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.mobilenet_v3_small(num_classes=10).state_dict()


def _classifier(pretrained: str, **kw):
    args = {"num_classes": 3, "in_channels": 3, "input_size": (32, 32), "progress": False}
    return create_model(f"tv:{CLASSIFIER}", pretrained=pretrained, **(args | kw))


def _assert_loaded(loaded: dict, served: dict, skip: str = "classifier.3.") -> None:
    names = [k for k in served if not k.startswith(skip)]
    assert names and sorted(names) == sorted(loaded)
    for k in names:
        torch.testing.assert_close(loaded[k], served[k], rtol=0, atol=0)


def test_tv_weights_name_is_downloaded_into_the_hub_cache_then_reused(server, hub, monkeypatch):
    served = _classifier_state()
    name = _serve(server.folder, CLASSIFIER, served)
    _point(monkeypatch, CLASSIFIER, f"{server.url}/{name}")

    model = _classifier("TEST")
    _assert_loaded(model.backbone.model.state_dict(), served)
    assert sorted(p.name for p in hub.iterdir()) == [name]  # the file, and nothing partial
    assert server.requests == [f"/{name}"]

    again = _classifier("DEFAULT")  # another name for the same entry: the cached file
    _assert_loaded(again.backbone.model.state_dict(), served)
    assert server.requests == [f"/{name}"]  # no second download


def test_tv_weights_name_trains_with_a_progress_bar_on_stderr(server, hub, monkeypatch, capsys):
    """``imrec train --pretrained NAME``: downloaded with torch.hub's bar, then trained."""
    served = _classifier_state()
    name = _serve(server.folder, CLASSIFIER, served)
    url = f"{server.url}/{name}"
    _point(monkeypatch, CLASSIFIER, url)
    from conftest import bar_folder

    images = bar_folder(hub.parent.parent / "bars", per_class=12)
    run = hub.parent.parent / "run"
    args = ["train", f"folder:{images}", "--model", f"tv:{CLASSIFIER}", "--pretrained", "TEST",
            "--epochs", "1", "--batch-size", "8", "--out", str(run)]  # fmt: skip
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert f'Downloading: "{url}"' in err and "Downloading" not in out  # stdout stays imrec's
    assert "100%" in err  # torch.hub's progress bar
    assert server.requests == [f"/{name}"] and (hub / name).is_file()
    assert json.loads((run / "report.json").read_text())["test"]["accuracy"] > 0


def test_quiet_download_prints_nothing(server, hub, monkeypatch, capsys):
    name = _serve(server.folder, CLASSIFIER, _classifier_state())
    _point(monkeypatch, CLASSIFIER, f"{server.url}/{name}")
    _classifier("TEST", progress=False)
    assert capsys.readouterr() == ("", "") and (hub / name).is_file()


def test_download_with_a_wrong_hash_is_refused_and_not_cached(server, hub, monkeypatch):
    name = _serve(server.folder, CLASSIFIER, _classifier_state(), corrupt=True)
    url = f"{server.url}/{name}"
    _point(monkeypatch, CLASSIFIER, url)
    with pytest.raises(WeightsUnavailableError) as caught:
        _classifier("TEST")
    message = str(caught.value)
    assert "invalid hash value" in message
    assert f"fetch {url} and put it at {hub / name}" in message
    assert isinstance(caught.value, FileNotFoundError)  # the type the cache-only code raised
    assert (caught.value.url, caught.value.path) == (url, hub / name)
    assert server.requests == [f"/{name}"]
    assert list(hub.iterdir()) == []  # no file, no .partial left over


def test_http_error_names_the_url_and_cache_path(server, hub, monkeypatch):
    url = f"{server.url}/{CLASSIFIER}-0123abcd.pth"  # not served: 404
    _point(monkeypatch, CLASSIFIER, url)
    with pytest.raises(FileNotFoundError, match="HTTP Error 404") as caught:
        _classifier("TEST")
    assert f"fetch {url} and put it at {hub / f'{CLASSIFIER}-0123abcd.pth'}" in str(caught.value)
    assert list(hub.iterdir()) == []


def test_server_down_says_where_to_put_the_file_and_a_hand_copy_is_used(server, hub, monkeypatch):
    served = _classifier_state()
    name = _serve(server.folder, CLASSIFIER, served)
    url = f"{_closed_port_url()}/{name}"
    _point(monkeypatch, CLASSIFIER, url)
    with pytest.raises(FileNotFoundError, match="could not be downloaded") as caught:
        _classifier("TEST")
    message = str(caught.value)
    assert f"tv:{CLASSIFIER}: pretrained weights TEST are not in the torch hub cache" in message
    assert f"fetch {url} and put it at {hub / name}" in message
    assert list(hub.iterdir()) == []

    shutil.copy(server.folder / name, caught.value.path)  # what the message tells a user to do
    _assert_loaded(_classifier("TEST").backbone.model.state_dict(), served)
    assert server.requests == []


def test_local_state_dict_file_is_not_a_name(server, hub, monkeypatch, tmp_path):
    """``pretrained=<file>`` reads the file and never looks at the weights enum or the network."""
    served = _classifier_state()
    torch.save(served, tmp_path / "mine.pth")
    _point(monkeypatch, CLASSIFIER, f"{_closed_port_url()}/x-00000000.pth")
    _assert_loaded(_classifier(str(tmp_path / "mine.pth")).backbone.model.state_dict(), served)
    assert not hub.exists()


def _detector(pretrained: str):
    return create_detector(
        DETECTOR,
        num_classes=2,
        in_channels=3,
        input_size=(64, 64),
        pretrained=pretrained,
        progress=False,
    )


def test_detector_weights_name_is_downloaded_then_reused(server, hub, monkeypatch):
    torch.manual_seed(2)
    source = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )
    served = source.state_dict()
    name = _serve(server.folder, DETECTOR_BUILDER, served)
    _point(monkeypatch, DETECTOR_BUILDER, f"{server.url}/{name}")

    det = _detector("DEFAULT")
    _assert_loaded(det.net.state_dict(), served, skip="-")
    assert sorted(p.name for p in hub.iterdir()) == [name]
    assert server.requests == [f"/{name}"]
    _assert_loaded(_detector("TEST").net.state_dict(), served, skip="-")
    assert server.requests == [f"/{name}"]  # the second build read the cache


def test_detector_download_failure_and_unknown_name(hub, monkeypatch):
    url = f"{_closed_port_url()}/{DETECTOR_BUILDER}-0123abcd.pth"
    _point(monkeypatch, DETECTOR_BUILDER, url)
    with pytest.raises(FileNotFoundError) as caught:
        _detector("DEFAULT")
    message = str(caught.value)
    assert message.startswith(f"{DETECTOR}: pretrained weights DEFAULT are not in the torch hub")
    assert f"fetch {url} and put it at {hub / f'{DETECTOR_BUILDER}-0123abcd.pth'}" in message
    assert list(hub.iterdir()) == []
    with pytest.raises(
        ValueError, match=r"unknown pretrained weights 'COCO'; valid: TEST, DEFAULT"
    ):
        _detector("COCO")
