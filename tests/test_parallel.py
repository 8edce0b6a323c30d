"""Preparing many images on every core (imrec.core.parallel) and the loaders that use it."""

from __future__ import annotations

import functools
import multiprocessing
import os

import numpy as np
import pytest
from PIL import Image

from imrec.core import parallel
from imrec.core.parallel import MIN_PROCESS_ITEMS, PROCESSES_ENV, cpu_imap, cpu_map, usable_cores
from imrec.data import folder

MANY = MIN_PROCESS_ITEMS * 2


def _pid_of(_: int) -> int:
    return os.getpid()


def _fails_on(bad: int, x: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x * x


def test_results_come_in_order_and_equal_a_plain_loop(monkeypatch):
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    items = list(range(MANY))
    assert cpu_map(functools.partial(pow, 3), items) == [3**i for i in items]
    assert cpu_map(abs, [-2, 1]) == [2, 1]  # few items: threads
    assert cpu_map(abs, []) == []


_PEERS = None  # set before a pool forks: its workers inherit it


def _pid_once_a_peer_runs(_: int) -> int:
    """The worker's pid; its first call waits until the other worker has started too, so a
    pool of two is seen to use both (however fast one alone could do all the work)."""
    global _PEERS
    if _PEERS is not None:
        _PEERS.wait(timeout=30)
        _PEERS = None  # in this worker only: later calls do not wait
    return os.getpid()


def test_many_items_go_to_worker_processes_few_stay_here(monkeypatch):
    global _PEERS
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    # one worker per usable core, at most one per 64 items; none with one core
    expected = min(usable_cores(), MANY // parallel.ITEMS_PER_PROCESS) if usable_cores() > 1 else 0
    assert parallel.process_count(MANY) == expected
    assert parallel.process_count(MIN_PROCESS_ITEMS - 1) == 0
    assert set(cpu_map(_pid_of, range(MIN_PROCESS_ITEMS - 1))) == {os.getpid()}
    monkeypatch.setenv(PROCESSES_ENV, "2")
    _PEERS = multiprocessing.get_context("fork").Barrier(2)
    try:
        pids = set(cpu_map(_pid_once_a_peer_runs, range(MANY)))
    finally:
        _PEERS = None
    assert len(pids) == 2 and os.getpid() not in pids
    monkeypatch.setenv(PROCESSES_ENV, "0")  # the way to keep everything in this process
    assert set(cpu_map(_pid_of, range(MANY))) == {os.getpid()}


def test_a_workers_exception_reaches_the_caller_as_raised(monkeypatch):
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    with pytest.raises(ValueError, match="item 300 is bad"):
        cpu_map(functools.partial(_fails_on, 300), range(MANY))
    with pytest.raises(ValueError, match="item 1 is bad"):
        cpu_map(functools.partial(_fails_on, 1), range(3))


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv(PROCESSES_ENV, "all")
    with pytest.raises(ValueError, match=f"{PROCESSES_ENV} must be a whole number, got 'all'"):
        cpu_map(abs, range(MANY))


def test_a_daemon_process_uses_threads(monkeypatch):
    """A DataLoader worker is a daemon, which may not start processes of its own."""
    monkeypatch.delenv(PROCESSES_ENV, raising=False)

    class Daemon:
        daemon = True

    monkeypatch.setattr(multiprocessing, "current_process", lambda: Daemon())
    assert parallel.process_count(MANY) == 0
    assert set(cpu_map(_pid_of, range(MANY))) == {os.getpid()}


def test_stopping_early_ends_the_workers(monkeypatch):
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    before = {p.pid for p in multiprocessing.active_children()}  # other tests' children
    it = cpu_imap(functools.partial(pow, 2), range(MANY))
    assert [next(it) for _ in range(3)] == [1, 2, 4]
    assert {p.pid for p in multiprocessing.active_children()} - before  # workers running
    it.close()  # the pool is shut down, not left running
    assert {p.pid for p in multiprocessing.active_children()} <= before


def test_a_handwriting_folder_is_the_same_prepared_in_processes_or_threads(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(MIN_PROCESS_ITEMS + 20):
        a = np.full((40, 40), 235, np.uint8)  # dark strokes on light paper
        y, x = rng.integers(5, 20, 2)
        a[y : y + 15, x : x + 3] = 20
        a[y + 6 : y + 9, x - 4 : x + 8] = 30
        p = tmp_path / f"{i}.png"
        Image.fromarray(a).save(p)
        paths.append((p, "c"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths.append((tmp_path / "broken.png", "c"))
    form = folder.InkForm()
    monkeypatch.setenv(PROCESSES_ENV, "0")
    here = folder._decode_all(paths, None, None, form)
    monkeypatch.delenv(PROCESSES_ENV)
    spread = folder._decode_all(paths, None, None, form)
    assert len(here) == len(spread) == len(paths)
    assert isinstance(spread[-1], str) and "not a readable image" in spread[-1]
    for a, b in zip(here[:-1], spread[:-1], strict=True):
        assert a.sha256 == b.sha256 and np.array_equal(a.pixels, b.pixels)
    assert here[0].pixels.shape == (28, 28, 3) and here[0].pixels.max() > 200


def test_chinese_mnist_prepared_in_processes_equals_threads(mirror, monkeypatch):
    from imrec.data import datasets

    tarball = mirror / "chinese-mnist" / "chinese_mnist.tar.gz"
    if not tarball.is_file():
        pytest.skip(f"no Chinese MNIST in the mirror at {mirror}")
    monkeypatch.setenv(PROCESSES_ENV, "0")
    here = datasets._decode_chinese(tarball, 48, sample=MIN_PROCESS_ITEMS + 44)
    monkeypatch.delenv(PROCESSES_ENV)
    spread = datasets._decode_chinese(tarball, 48, sample=MIN_PROCESS_ITEMS + 44)
    assert here["images"].shape == (300, 48, 48)
    for key in ("images", "labels", "groups"):
        assert np.array_equal(here[key], spread[key])


def test_ctrl_c_while_a_dataset_is_prepared_stops_every_worker_and_keeps_no_half(mirror, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while Chinese MNIST
    is being prepared in worker processes: the command ends at once with the usual message,
    no process of it is left, and the cache holds the verified download but no prepared file."""
    import signal
    import subprocess
    import sys
    import time

    if not (mirror / "chinese-mnist").is_dir():
        pytest.skip(f"no Chinese MNIST in the mirror at {mirror}")
    home = tmp_path / "home"
    env = dict(os.environ, IMREC_HOME=str(home), IMREC_DATA_MIRROR=str(mirror))
    env.pop(PROCESSES_ENV, None)
    cmd = [sys.executable, "-m", "imrec", "train", "chinese-mnist", "--out", str(tmp_path / "r")]
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        # As from a terminal: a shell starts background jobs with SIGINT ignored, and Python
        # leaves an ignored SIGINT ignored, so a test run started with `&` would hand that on.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stderr.readline()  # the notice comes just before the work starts
        assert "preparing 15000 Chinese MNIST images" in first
        time.sleep(0.1)  # well inside the work: 15,000 images take seconds even on 16 cores
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "imrec: interrupted" in err
    assert "Traceback" not in err  # the workers end quietly too
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nobody of that process group is left
    kept = sorted(p.name for p in home.rglob("*") if p.is_file())
    assert kept == ["chinese_mnist.tar.gz", "chinese_mnist.tar.gz.sha256"]
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").glob("*.safetensors"))
