"""Data-parallel training on several processes: the little that torchrun leaves to us.

``torchrun --nproc_per_node=N -m imrec train ...`` starts N copies of ``imrec train`` with
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` in their environment. Each copy
reads them here, joins one process group (gloo on the CPU, NCCL on GPUs), and the trainer then
splits every batch across the ranks and reduces its metrics with the helpers below.

Every collective has a timeout (``IMREC_DIST_TIMEOUT`` seconds, 120 by default), so a rank that
dies or hangs makes the others fail with a clear message instead of waiting forever.

Example:
    >>> world = world_from_env()  # outside torchrun: a world of one process
    >>> world.size, world.rank, world.main
    (1, 0, True)
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from imrec.core import heap

TIMEOUT_ENV = "IMREC_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
# Rank 0 writes the report (test metrics, plots) while the others wait for it; that can take
# much longer than one collective, so this wait has its own, longer bound.
FINISH_TIMEOUT_S = 3600.0

_control: dist.ProcessGroup | None = None  # a gloo group for host-side waits and objects


class DistributedError(RuntimeError):
    """The process group cannot start, or another rank stopped answering."""


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of one job.

    ``size`` processes in all, ``local_size`` of them on this machine; ``rank`` is this
    process's number in the job (0 = the main one), ``local_rank`` its number on this machine.
    """

    size: int = 1
    rank: int = 0
    local_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The world torchrun describes in the environment (a world of one without torchrun).

    Example:
        >>> env = {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0"}
        >>> world_from_env(env)
        World(size=4, rank=2, local_size=2, local_rank=0)
    """
    env = os.environ if env is None else env
    size = int(env.get("WORLD_SIZE", "1"))
    local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    return World(size, int(env.get("RANK", "0")), local_size, int(env.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    """True in rank 0 and in a plain (non-torchrun) process: the one that writes files.

    It reads the environment, so it holds before the process group starts and after it ends.

    Example:
        >>> is_main()
        True
    """
    return world_from_env().main


def timeout_seconds() -> float:
    """The collective timeout: ``$IMREC_DIST_TIMEOUT`` seconds, else 120.

    Example:
        >>> timeout_seconds() > 0
        True
    """
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r}: the timeout must be positive")
    return value


def cpu_threads(local_size: int) -> int:
    """Threads per process when ``local_size`` processes share this machine's usable cores.

    Example:
        >>> cpu_threads(1) == len(os.sched_getaffinity(0))
        True
    """
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_size))


def backend_for(device: torch.device) -> str:
    """NCCL for GPUs, gloo for the CPU.

    Example:
        >>> backend_for(torch.device("cpu"))
        'gloo'
    """
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: torch.device, timeout_s: float | None = None) -> torch.device:
    """Join the job's process group (once) and return this rank's device.

    On GPUs each process on a machine takes the GPU of its ``LOCAL_RANK``. The rendezvous
    address comes from torchrun (``MASTER_ADDR``, ``MASTER_PORT``): call it under torchrun only.

    Usage (in a process started by torchrun)::

        device = setup(torch.device("cpu"))
    """
    world = world_from_env()
    die_with_launcher()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", world.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device
    timeout = timedelta(seconds=timeout_s or timeout_seconds())
    # DistributedDataParallel imports torch._dynamo on first use. Imported while a process
    # group exists, torch._dynamo keeps references to that group for the life of the process,
    # so destroy_process_group() cannot end it and its gloo threads outlive the interpreter
    # (see shutdown). Imported before the group exists, it keeps none.
    importlib.import_module("torch._dynamo")

    try:
        dist.init_process_group(backend_for(device), timeout=timeout)
    except Exception as e:  # the rendezvous raises several types (store, network, value)
        raise DistributedError(
            f"rank {world.rank} of {world.size} could not join the process group at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: {e}"
        ) from e
    global _control
    # NCCL moves GPU tensors only; objects and long waits go through a gloo group.
    _control = dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" else None
    return device


def die_with_launcher() -> None:
    """Ask Linux to kill this process when its parent (torchrun's agent) dies.

    torchrun starts each worker in a session of its own, so without this ``kill -9`` of torchrun
    (or of its process group) would leave the workers running unseen, still writing the run
    folder that a ``--resume`` then writes too. Elsewhere than Linux this does nothing.
    """
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not fatal: the launcher's own teardown still stops the workers
    if os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def shutdown() -> None:
    """Leave the process group and end its worker threads (a no-op when none was joined).

    Call it with no other references to the group left (drop DDP wrappers first). The group's
    worker threads must end while the interpreter still runs: a gloo worker that releases the
    tensors of the last collective needs the GIL, and one that asks for it during interpreter
    finalisation is ended by CPython with ``pthread_exit``, whose unwinding through a C++
    destructor aborts the process (``terminate called without an active exception``, exit -6)
    after a successful run. The last reference to a group is dropped with the GIL released,
    so its destructor joins those threads here.
    """
    global _control
    _control = None
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # e.g. after a peer died: the run's own error must not be hidden
            print(f"imrec: warning: leaving the process group failed: {e}", file=sys.stderr)
    # Objects in reference cycles (a trainer and its DDP wrapper) may still hold the group:
    # collect them now, not during interpreter shutdown.
    heap.collect_all()


def collective_threads() -> int:
    """How many gloo worker threads this process runs (0 once every process group has ended).

    Linux only (it reads thread names from ``/proc``); 0 elsewhere.

    Example:
        >>> collective_threads()
        0
    """
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return 0
    names = []
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended while we looked
            continue
    return sum(name == "pt_gloo_runloop" for name in names)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; every rank gets the same result.

    Usage (on every rank, after :func:`setup`)::

        counts = all_reduce_sum(torch.tensor([3.0, 1.0]))
    """
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each of ``values`` summed over all ranks, in one collective (float64 on ``device``).

    Usage (on every rank, after :func:`setup`)::

        loss, correct, count = sum_over_ranks([2.5, 30, 32], torch.device("cpu"))
    """
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all ranks, in place (floating-point tensors)."""
    return all_reduce_sum(tensor).div_(dist.get_world_size())


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (a small JSON-like value) on every rank.

    Used for decisions that every rank must take alike, such as the best epoch.
    """
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control)
    return box[0]


def gather_objects(obj) -> list | None:
    """Every rank's ``obj`` on rank 0, in rank order (``None`` on the other ranks).

    Used for results that only rank 0 combines, such as detections for COCO evaluation.
    """
    out = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0, group=_control)
    return out


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm running statistics) to every rank."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src=src)


def barrier() -> None:
    """Wait until every rank gets here (bounded by the collective timeout)."""
    dist.barrier(group=_control)


def share_from_main(obj, timeout_s: float = FINISH_TIMEOUT_S):
    """Wait (up to ``timeout_s``) for rank 0 to get here, then return its ``obj`` on every rank.

    Usage (on every rank, after :func:`setup`)::

        report = share_from_main(report if is_main() else None)
    """
    dist.monitored_barrier(group=_control, timeout=timedelta(seconds=timeout_s))
    return broadcast_object(obj)


def shard(n: int, world: World) -> slice:
    """This rank's contiguous part of ``range(n)``; parts differ in length by at most one.

    Example:
        >>> shard(10, World(size=3, rank=2))
        slice(6, 10, None)
    """
    return slice(world.rank * n // world.size, (world.rank + 1) * n // world.size)


def is_comm_failure(error: BaseException) -> bool:
    """Whether ``error`` says a collective failed, rather than that the code has a bug.

    Gloo reports a peer that went away as a plain ``RuntimeError`` from deep inside DDP, so
    the message is what tells them apart.

    Example:
        >>> is_comm_failure(RuntimeError("[gloo/tcp/pair.cc:545] Connection reset by peer"))
        True
        >>> is_comm_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
        False
    """
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(word in text for word in _COMM_WORDS)


_COMM_WORDS = ("gloo", "nccl", "connection reset", "connection closed", "timed out", "timeout")


def failure_message(error: BaseException, world: World) -> str:
    """What to tell the user when a collective fails: another rank hung or died.

    Example:
        >>> error = RuntimeError("Application timeout caused pair closure")
        >>> "rank 1 of 2 gave no answer within" in failure_message(error, World(size=2))
        True
    """
    text, limit = str(error).lower(), timeout_seconds()
    if "timed out" in text or "timeout" in text:
        others = f"rank {1 - world.rank}" if world.size == 2 else "another rank"
        what = (
            f"{others} of {world.size} gave no answer within the collective timeout "
            f"({limit:g} s; set {TIMEOUT_ENV} to change it): it hangs or is too slow"
        )
    else:
        what = (
            f"another process died or closed its connection (the collective timeout is "
            f"{limit:g} s, set {TIMEOUT_ENV} to change it)"
        )
    return (
        f"distributed training failed on rank {world.rank} of {world.size}: {what}; torchrun's "
        f"summary names the rank that failed first. Continue with "
        f"`torchrun ... -m imrec train --resume RUN_DIR`. ({error})"
    )
