"""Keep Python's cyclic garbage collector off the objects a command holds for its whole life.

A process that has imported torch holds about a million objects the collector tracks (modules,
functions, classes), and importing them makes almost no garbage. Yet each full collection walks
all of them: on the 2-core CPU ``imrec train mnist`` spent ~0.5 s in collections before its
first step (importing torch, torch's optimisers, loading the data) and ~0.7 s in the
interpreter's shutdown, against ~0.01 s during three epochs of training.

The command line (:func:`imrec.cli.main`) therefore pauses the collector while a command starts
(:func:`start`); the command calls :func:`settled` once its long-lived objects exist (the model
is built or loaded; commands without a model, such as ``imrec data`` and ``imrec doctor``, as
soon as their arguments are read), which freezes them (:func:`gc.freeze`: reference counting still frees them,
only the collector's scans skip them) and turns the collector back on; :func:`leave` spares the
shutdown its walk. A program that imports imrec as a library is not affected: without
:func:`start`, :func:`settled` does nothing.

The command line also asks the C allocator to keep freed memory (:func:`keep_freed_memory`):
glibc's malloc maps blocks above 128 KB-32 MB straight from the kernel and unmaps them when they
are freed, so a training step's activations (one conv output of a 256-image MNIST batch is
22 MB) were mapped, zero-filled page by page and unmapped again on every step: 1.1 million page
faults in one epoch of ``imrec train mnist``.
"""

from __future__ import annotations

import gc
import os
import sys

_paused = False  # the collector was paused by start() and not yet settled()
_froze = False  # settled() froze objects (collect_all() must thaw them to find their garbage)


def start() -> None:
    """Pause the collector for a command's start-up (imports, data, model), if it runs."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def settled() -> None:
    """The command's long-lived objects exist: freeze them and resume collecting.

    Example (outside a command nothing changes):
        >>> import gc
        >>> before = gc.get_freeze_count()
        >>> settled()
        >>> gc.isenabled(), gc.get_freeze_count() == before
        (True, True)
    """
    global _paused, _froze
    if _paused:
        _paused = False
        _froze = True
        gc.freeze()
        gc.enable()


def collect_all() -> None:
    """A full collection that also finds garbage cycles among objects :func:`settled` froze
    (a trainer and the DDP wrapper holding its process group, which must end before exit)."""
    global _froze
    if _froze:
        _froze = False
        gc.unfreeze()
    gc.collect()


def leave() -> None:
    """The command is done and its files are closed: collect what is garbage now (so its
    finalisers run as usual), then freeze the rest, which the shutdown would walk again."""
    settled()
    if gc.isenabled():
        gc.collect()
        gc.freeze()


# glibc's mallopt() parameters (malloc.h) and the sizes set: blocks up to 256 MB come from the
# heap, and up to 256 MB of freed memory at its top is kept for the next step. One epoch of
# `imrec train mnist` on the 2-core CPU (BENCHMARKS.md "MNIST: imrec vs the tutorial"): 0.3
# million page faults instead of 1.1 million, epochs ~10% faster, peak memory 1.4-1.6 GB instead
# of 1.0 GB. A long-lived `imrec serve` keeps at most that much freed memory per malloc arena.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP = 256 * 2**20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks up to :data:`KEEP` bytes from its heap and to keep up
    to as much freed memory instead of handing it back to the kernel at once. True when set;
    False elsewhere than on glibc, or when the environment already sets malloc's thresholds
    (yours are kept)."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _USER_SETTINGS):
        return False
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own malloc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP))
