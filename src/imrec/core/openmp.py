"""Let idle OpenMP threads sleep soon, so that data workers on the same cores get to run.

PyTorch's CPU kernels run in an OpenMP team (GNU libgomp in the Linux wheels). Between two
parallel regions its threads spin for a while before they sleep (libgomp's default: 300,000
turns of a loop), which costs nothing when the training step has the cores to itself, as an
MNIST run held in memory does. But a run whose batches are drawn or decoded by DataLoader
worker processes (rendered handwriting, ``hanzi`` and ``letters``; folders streamed from their
files) shares the cores with those workers, and every spinning thread takes a core from them.
On the 2-core CPU (BENCHMARKS.md "OpenMP threads that wait briefly", medians of two rounds):

- ``imrec train hanzi:chars=(200),train=100`` 2 epochs: 95.4 s of training with libgomp's
  default, 76.5 s with a short spin (10,000 turns), 72.7 s sleeping at once (``PASSIVE``);
- a folder of Chinese MNIST streamed from its files: 59.9 s, 49.4 s and 46.9 s;
- ``imrec train mnist`` (in memory, no workers): 26.1 s, 27.0 s and 32.2 s: sleeping at once
  slows a step that has the cores to itself by a fifth, the short spin by 3%.

So the command line (:func:`imrec.cli.main`) sets :data:`SPIN` turns (``GOMP_SPINCOUNT``)
before torch is imported: most of the gain for streamed runs, little of the loss for the others.
The results do not change (the same arithmetic; only how threads wait). Your own
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is kept. A program that imports imrec as a library
chooses for itself: set the variable before importing torch.
"""

from __future__ import annotations

import os
import sys

SPIN = 10_000  # turns an idle libgomp thread spins before it sleeps (libgomp: 300,000)
_USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def wait_briefly() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN` for this process and its children. True when
    set; False when the environment already chooses how OpenMP threads wait (yours is kept) or
    torch is already imported (its OpenMP runtime read the environment when it loaded)."""
    if "torch" in sys.modules or any(k in os.environ for k in _USER_SETTINGS):
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN)
    return True
