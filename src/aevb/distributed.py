"""Training on several processes with torch.distributed (``torchrun``): what the trainer and evaluation need.

Data-parallel with DistributedDataParallel's semantics, on torch.distributed's own collectives:

* every rank holds the whole model and draws the same seeded permutation of the examples each epoch, so the
  global batches agree; rank r takes the r-th of W near-equal slices of each global batch (``shard``);
* a step's loss on a rank is -(sum of its slice's ELBOs) / (global batch size), so the sum over ranks of the
  gradients (one ``all_reduce``) is the single-process gradient of the mean ELBO over the global batch, up to
  float summation order. Only the parameters of the groups the phase moves are reduced: an E-phase neither
  waits for theta's gradients nor moves theta (DDP's wrapper would reduce every parameter that requires one);
* metrics are sums over each rank's shard of the test set, reduced the same way.

With no process group initialized (one process) every function here is the identity of the one-process case.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def active() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
