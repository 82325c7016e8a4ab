"""Training on several processes with torch.distributed (``torchrun``): what the trainer and evaluation need.

Data-parallel with DistributedDataParallel's semantics, on torch.distributed's own collectives:

* every rank holds the whole model and draws the same seeded permutation of the examples each epoch, so the
  global batches agree; rank r takes the r-th of W near-equal slices of each global batch (``shard``);
* a rank backpropagates -(sum of its slice's ELBOs); the gradients and row counts, summed over the ranks in one
  ``all_reduce``, give the gradient sum over the global batch, divided by its size: the single-process gradient
  of the mean ELBO, up to float summation order. Only the parameters of the groups the phase moves are reduced: an E-phase neither
  waits for theta's gradients nor moves theta (DDP's wrapper would reduce every parameter that requires one);
* metrics are sums over each rank's shard of the test set, reduced the same way, or per-example values (the
  GMVAE's q(y|x)) computed in shards and gathered.

With no process group initialized (one process, not started by ``torchrun``) every function here is the identity
of the one-process case. Under ``torchrun`` the group is joined at any world size, one included, so that a single
GPU runs the NCCL path a job on several would.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from aevb.errors import OtherRankFailed, Terminated, UsageError

T = TypeVar("T")
TIMEOUT = timedelta(minutes=10)  # a rank that stops answering (a crash outside a collective) fails the others then


def init_from_environment() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE and MASTER_ADDR): NCCL with
    this rank's GPU (LOCAL_RANK) where CUDA is available, gloo on CPUs. False, and nothing done, without them."""
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        return False
    if dist.is_initialized():  # joined already (a script that calls aevb.cli.main)
        return True
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)
    return True


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is in an initialized process group (of any size: ``torchrun --nproc-per-node 1`` too)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def shard(count: int) -> slice:
    """This rank's rows of ``count`` rows: the r-th of W contiguous, near-equal slices (sizes differ by at most
    one; a slice may be empty when count < W)."""
    size, r = world_size(), rank()
    base, extra = divmod(count, size)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def all_reduce_sum(tensors: list[Tensor]) -> None:
    """Replace each tensor by its sum over the ranks, in place, in one collective over their concatenation."""
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    for t, total in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(total.view_as(t))


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj) -> list:
    """Every rank's ``obj``, in rank order (a picklable object); [obj] in one process."""
    if not active():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


INTERRUPTIONS = {"KeyboardInterrupt": KeyboardInterrupt, "Terminated": Terminated}  # a signal on one rank


def together(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank; if it raises on any, every rank raises (``agree``), so that no rank goes on to wait
    for the others in a collective."""
    if not active():
        return fn()
    try:
        result, failure = fn(), None
    except BaseException as e:  # noqa: BLE001  (re-raised below, on every rank)
        result, failure = None, e
    agree(failure)
    return result


def agree(failure: BaseException | None) -> None:
    """Every rank passes what it raised (None: nothing); if any raised, every rank raises: the first rank that failed
    its own error, the others a ``UsageError`` with its message, the same interruption
    (KeyboardInterrupt, ``Terminated``), or ``OtherRankFailed`` naming the rank and the error. The raised error has
    ``agreed = True``: one rank (rank 0) reports it. A collective (an all-gather) in a process group."""
    described = None if failure is None else (isinstance(failure, UsageError), type(failure).__name__, str(failure))
    failures = [(r, f) for r, f in enumerate(all_gather(described)) if f is not None]
    if not failures:
        return
    r, (usage, name, message) = failures[0]
    if r == rank():
        error = failure
    elif usage:
        error = UsageError(message)
    elif name in INTERRUPTIONS:
        error = INTERRUPTIONS[name]()
    else:
        error = OtherRankFailed(f"rank {r}: {name}: {message}")
    error.agreed = True
    raise error


def on_rank_0(fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 alone (what it writes, say), every rank learning whether it raised (``together``);
    None on the other ranks."""
    return together(lambda: fn() if rank() == 0 else None)
