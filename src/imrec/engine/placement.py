"""Where training images live (device, host or their files), how each epoch's batches are
drawn from seeds, and how a global batch is shared between ranks.
"""

from __future__ import annotations

import contextlib
import os
from functools import partial

import torch

from imrec.core.errors import TrainError
from imrec.engine.distributed import World, cpu_threads

DEVICE_DATA_SHARE = 0.25  # "auto" keeps the training set on a GPU up to this share of its memory


STATS_SAMPLE = 10_000  # images that estimate the normalisation of a streamed training set


PLACEMENTS = ("auto", "device", "host", "stream")


def choose_placement(mode: str, images, device: torch.device) -> str:
    """Where the uint8 training images live: ``"device"``, ``"host"`` or ``"stream"``.

    ``device``: the whole set is one tensor on the training device and each batch is gathered
    and augmented there (MNIST-sized data: no per-batch copies at all). ``host``: the set stays
    in (page-locked, on a GPU machine) host memory and each gathered batch is copied over
    asynchronously. ``stream``: the set stays in its files (a folder dataset too large for
    memory, see :func:`imrec.data.folder.load_folder`); DataLoader workers decode each batch
    ahead into page-locked memory. ``auto``: ``stream`` for such a set; else ``device`` on a CPU
    (host and device are the same memory), and on a GPU while the set takes at most a quarter
    of the GPU's memory, else ``host``.

    Example:
        >>> choose_placement("auto", torch.zeros(10, 1, 28, 28, dtype=torch.uint8), torch.device("cpu"))
        'device'
    """
    if mode not in PLACEMENTS:
        raise TrainError(f"unknown data placement {mode!r}: choose {', '.join(PLACEMENTS)}")
    streamed = not isinstance(images, torch.Tensor)
    if streamed and mode in ("device", "host"):
        raise TrainError(
            f"data placement {mode!r}: the training images are streamed from their files "
            "(too large for memory); use stream or auto"
        )
    if streamed or mode == "stream":
        if not streamed:
            raise TrainError("data placement 'stream': these training images are in memory")
        return "stream"
    if mode != "auto":
        return mode
    if device.type != "cuda":
        return "device"
    total = torch.cuda.get_device_properties(device).total_memory
    return "device" if images.numel() <= DEVICE_DATA_SHARE * total else "host"


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of one rank's augmentation draws: they differ between ranks, and repeat per run."""
    return (epoch_seed(seed, epoch) + 1_000_033 * (rank + 1)) % (2**63)


def rank_batch(idx: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a global batch of indices.

    A final batch with fewer samples than ranks is repeated so that no rank gets nothing.

    Example:
        >>> rank_batch(torch.arange(5), World(size=2, rank=1))
        tensor([3, 4])
    """
    if len(idx) < world.size:
        idx = idx.repeat(world.size)[: world.size]
    return torch.tensor_split(idx, world.size)[world.rank]


class _FileSamples(torch.utils.data.Dataset):
    """One decoded image and its label per index, for DataLoader workers."""

    def __init__(self, images, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Images drawn afresh each epoch are asked for by index + epoch x len (see
        # imrec.data.types.DrawnImages); their labels repeat.
        return self.images.read(i), self.labels[i % len(self.labels)]


class _EpochBatches(torch.utils.data.Sampler):
    """The batches of indices of the current epoch (set before each pass)."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def default_workers(images, local_size: int = 1, priority: str = "idle") -> int:
    """DataLoader workers for a streamed training split when ``--workers`` is 0.

    At ``priority`` "idle" (the default; :func:`_worker_init`) a worker on every core of this
    process's share (its cores when ``local_size`` processes train on this machine), at most
    8 for files (more wait on the disk and the training step): each works while the step's
    threads leave its core idle (waiting for a batch, or in the step's serial parts) and gives
    way as soon as they run. On the 2-core CPU that trains 1.23x faster than one worker at
    normal priority beside the step for renders (BENCHMARKS.md "Render workers that give way
    to the step") and 1.17x for files (Chinese MNIST's 15,000 files streamed as a folder,
    stop 64). At "normal" every spare core (all but one), at most 8 for files (an H200
    machine's 16 cores: 15 render workers drew 8,354 hanzi renders/s, 7 drew 4,451;
    BENCHMARKS.md "The default run on one GPU").

    Example:
        >>> class Drawn: fresh = True
        >>> default_workers([]) == min(8, cpu_threads(1)), default_workers(Drawn()) == cpu_threads(1)
        (True, True)
    """
    share = cpu_threads(local_size)
    cores = share if priority == "idle" else max(1, share - 1)
    return cores if getattr(images, "fresh", False) else min(8, cores)


def _worker_init(_: int, give_way: bool = False) -> None:
    """A DataLoader worker's set-up: one thread (decoding workers must not fight the training
    threads) and, with ``give_way``, the lowest CPU priority there is (Linux ``SCHED_IDLE``;
    elsewhere nice 19), so that the training step's threads always come first."""
    torch.set_num_threads(1)
    if not give_way:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: the lowest nice value
        with contextlib.suppress(OSError):
            os.nice(19)


class StreamLoader:
    """DataLoader workers that decode the batches of streamed training images ahead.

    The batches are the in-memory path's (the same permutation, the same rank shares), so a
    streamed run trains exactly as one held in memory; workers stay alive between epochs.
    """

    PREFETCH = 4  # batches each worker decodes ahead

    def __init__(
        self,
        images,
        labels: torch.Tensor,
        workers: int,
        pin: bool,
        local_size: int = 1,
        priority: str = "idle",
    ):
        workers = workers or default_workers(images, local_size, priority)
        give_way = priority == "idle"
        # What the report says of them: how many, and at which CPU priority.
        self.info = {"count": workers, "priority": "idle" if give_way else "normal"}
        self.sampler = _EpochBatches()
        self.loader = torch.utils.data.DataLoader(
            _FileSamples(images, labels),
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin,
            prefetch_factor=self.PREFETCH,
            persistent_workers=True,
            worker_init_fn=partial(_worker_init, give_way=give_way),
            # Its own generator: drawing the workers' seed from the global one would change
            # the dropout masks that follow (and so the run) compared with in-memory training.
            generator=torch.Generator().manual_seed(0),
        )

    def epoch(self, batches: list[list[int]]):
        self.sampler.batches = batches
        return iter(self.loader)
