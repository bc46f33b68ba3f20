"""Data-parallel training on torch.distributed: the glue between graft's loop and
``torch.distributed`` (ranks, the process group, batch shards, reductions). Nothing home-made:
torchrun starts the processes and runs the rendezvous, gloo (CPU) or NCCL (GPU) moves the
numbers, :class:`~torch.nn.parallel.DistributedDataParallel` all-reduces the gradients.

What a distributed ``graft fit`` keeps equal to a single process:

- **the global batch**: every rank reads the same seeded sequence of global batches (graft's
  length-grouped text batches included) and takes every ``world``-th example of each
  (:class:`ShardedBatches`), so ``train.batch_size`` keeps its meaning;
- **the gradient**: each rank weights its shard's mean loss by ``n_rank * world / n_global``
  before DDP averages, so the all-reduced gradient is the global batch's mean gradient also for
  an uneven last batch; penalties (L2-SP, ...) come out once;
- **the metrics**: the step's loss and counts are summed over ranks (:func:`sum_over_ranks`)
  before they are logged or checked for NaN, and an evaluation computes each batch of the
  single-process evaluation on one rank and gathers them (:func:`gather_batches`), so every
  rank sees the same, single-process, validation metrics and takes the same early-stopping
  decision.

What differs, by design: BatchNorm statistics are each rank's shard's (DDP's default; rank 0's
running statistics are broadcast every step), and dropout / augmentation draws come from a
stream seeded by (seed, epoch, batch, rank), so they cannot equal one process's draws.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from graft.errors import GraftError, UsageError
from graft.pipeline import BatchIndex, EpochBatches, batch_seed, identity_collate

T = TypeVar("T")

# How long a collective may wait for another rank before the job fails (seconds). Long enough
# for rank 0 to write a checkpoint of a large model while the others wait at the next step.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("GRAFT_DIST_TIMEOUT", 600))


class PeerLost(GraftError):
    """Another rank of a distributed run died or became unreachable (exit code 6)."""

    exit_code = 6


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a distributed job (torchrun's environment)."""

    rank: int
    world: int
    local_rank: int
    local_world: int

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run directory, logs and checkpoints."""
        return self.rank == 0


_active: Ranks | None = None


def ranks_from_environment() -> Ranks | None:
    """The ranks torchrun set (``WORLD_SIZE`` > 1), or None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Ranks(
        rank=int(os.environ["RANK"]),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )


def is_main_process() -> bool:
    """Whether this process is rank 0 of its job, or the only one (from torchrun's ``RANK``)."""
    return int(os.environ.get("RANK", "0")) == 0


def active() -> Ranks | None:
    """This process's ranks while a process group is up (between :func:`start` and
    :func:`stop`), else None."""
    return _active


def rank_device(device: torch.device) -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` on GPUs (one process per GPU)."""
    if _active is None or device.type != "cuda":
        return device
    if _active.local_rank >= torch.cuda.device_count():
        raise UsageError(
            f"local rank {_active.local_rank} has no GPU: {torch.cuda.device_count()} visible",
            hint="start at most one process per GPU (--nproc / --nproc-per-node)",
        )
    return torch.device("cuda", _active.local_rank)


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group: NCCL with one GPU per process, gloo on a CPU."""
    global _active
    if device.type == "cuda":
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UsageError(f"hardware.device: {device.type} has no distributed backend here")
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    except (RuntimeError, ValueError) as e:
        raise PeerLost(f"could not join the process group ({backend}): {e}") from None
    _active = ranks
    if device.type == "cuda":
        torch.cuda.set_device(rank_device(device))


def finish_together() -> None:
    """Wait until every rank has finished its run, so that they leave the group together: a rank
    tearing down its half of a gloo group while a peer still works can abort the process
    ("terminate called without an active exception", seen once at the end of a run)."""
    if _active is not None and dist.is_initialized():
        dist.barrier()


def stop() -> None:
    """Leave the process group (after a run, also a failed one)."""
    global _active
    if dist.is_initialized():
        dist.destroy_process_group()
    _active = None


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return 1 if _active is None else _active.world


def check_same(value: str, what: str) -> None:
    """Every rank must hold the same ``value`` (a config hash, a data fingerprint): a job whose
    ranks read different configs or data would train on nonsense."""
    if _active is None:
        return
    values: list[Any] = [None] * _active.world
    dist.all_gather_object(values, value)
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if odd:
        raise UsageError(
            f"the {what} differs between ranks: rank 0 has {str(values[0])[:12]}, "
            + ", ".join(f"rank {r} has {str(values[r])[:12]}" for r in odd),
            hint="start every rank with the same config, overrides and data",
        )


def from_main(make: Callable[[], T]) -> T:
    """``make()`` run on rank 0 and its value sent to every rank; a :class:`GraftError` it
    raises is raised on every rank (the others would otherwise wait for a value that never
    comes). In a single process: ``make()``."""
    if _active is None:
        return make()
    box: list[Any] = [None]
    if _active.main:
        try:
            box[0] = ("value", make())
        except GraftError as e:
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over ranks (float64 on the CPU: exact for counts)."""
    if _active is None:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (a stop request): all ranks agree on the answer."""
    return bool(sum_over_ranks([float(flag)])[0]) if _active is not None else flag


def all_ranks(flag: bool) -> bool:
    """Whether ``flag`` is set on every rank."""
    if _active is None:
        return flag
    return sum_over_ranks([float(flag)])[0] == _active.world


def seed_step(seed: int, epoch: int, batch: int) -> None:
    """In a distributed run, seed this rank's random streams (dropout) for one batch from
    (seed, epoch, batch, rank): unrelated between ranks, and restored by a resume from the
    position alone, whatever the number of ranks that wrote the checkpoint."""
    if _active is not None:
        torch.manual_seed(batch_seed(seed * 65_537 + _active.rank, epoch, batch))


class ShardedBatches(EpochBatches):
    """:class:`~graft.pipeline.EpochBatches` of which this rank takes every ``world``-th
    example, from its ``rank``-th on. The global batches, their order and ``len`` stay those of
    one process, so every rank steps in lock-step."""

    def __init__(self, base: EpochBatches, rank: int, world: int) -> None:
        super().__init__(base.n, base.batch_size, base.shuffle, base.seed, base.lengths)
        self.epoch, self.start = base.epoch, base.start
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for index in super().__iter__():
            assert isinstance(index, BatchIndex)
            # ``part``: the shards of a batch draw different augmentations.
            yield BatchIndex(index[self.rank :: self.world], index.epoch, index.position, self.rank)


def shard_loader(loader: DataLoader[Any]) -> DataLoader[Any]:
    """``loader`` with this rank's shard of each batch (unchanged in a single process)."""
    sampler = loader.batch_sampler
    if _active is None or not isinstance(sampler, EpochBatches):
        return loader
    return DataLoader(
        loader.dataset,
        batch_sampler=ShardedBatches(sampler, _active.rank, _active.world),
        collate_fn=identity_collate,
        num_workers=loader.num_workers,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
    )


class EveryNthBatch(Sampler[list[int]]):
    """The batches of ``base`` at positions ``rank``, ``rank + world``, ... (a rank's part of
    an evaluation)."""

    def __init__(self, base: Any, rank: int, world: int) -> None:
        self.base, self.rank, self.world = base, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, len(self.base), self.world))

    def __iter__(self) -> Iterator[list[int]]:
        for position, index in enumerate(self.base):
            if position % self.world == self.rank:
                yield index


def my_batches(loader: DataLoader[Any]) -> DataLoader[Any]:
    """The batches of ``loader`` this rank computes (all of them in a single process); the
    results go back together with :func:`gather_batches`."""
    if _active is None or loader.batch_sampler is None:
        return loader
    return DataLoader(
        loader.dataset,
        batch_sampler=EveryNthBatch(loader.batch_sampler, _active.rank, _active.world),
        collate_fn=identity_collate,
        num_workers=loader.num_workers,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
    )


def my_positions(n_batches: int) -> range:
    """The batch positions this rank computes of a pass split by whole batches."""
    if _active is None:
        return range(n_batches)
    return range(_active.rank, n_batches, _active.world)


def gather_batches(mine: list[Any]) -> list[Any]:
    """Every rank's :func:`my_positions` results, back in batch order (on every rank)."""
    if _active is None:
        return mine
    parts: list[Any] = [None] * _active.world
    dist.all_gather_object(parts, mine)
    ordered: list[Any] = []
    for i in range(max(len(p) for p in parts)):
        ordered += [p[i] for p in parts if i < len(p)]
    return ordered


def wrap(module: nn.Module) -> nn.Module:
    """``module`` in DistributedDataParallel when it has anything to train; rebuilt for every
    phase, because DDP registers its gradient hooks on the parameters trainable when it is
    built (a phase that thaws a group needs a new one)."""
    if _active is None or not any(p.requires_grad for p in module.parameters()):
        return module
    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    # Running statistics of BatchNorm layers that train are rank 0's, broadcast before every
    # forward (DDP's default). Nothing else needs it, and with the frozen-prefix cache's stubs
    # swapped in there may be no buffer left to send (DDP then fails an internal assert).
    batch_norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    training_bn = any(
        isinstance(m, batch_norms) and any(p.requires_grad for p in m.parameters())
        for m in module.modules()
    )
    return nn.parallel.DistributedDataParallel(
        module, device_ids=ids, forward_sync_buffers=training_bn
    )
