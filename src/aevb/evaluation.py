"""Honest evaluation of a fitted model on a test set, in eval mode (dropout off), in batches.

* ``test_elbo``: the mean over the test set of the model's default one-draw estimate of the ELBO (AEVB for a
  model with one latent; the GMVAE's sums y out), nats per example;
* ``iwae_log_likelihood``: the mean K-sample importance-weighted bound
  log (1/K) sum_k p(x, z_k) / q(z_k | x) <= log p(x), K weights drawn in chunks (bounded memory for any K);
  for a conditional model the batch's context (the label y, or another context c) makes it a bound on
  log p(x | y) (or log p(x | c));
* ``bits_per_dim``: for dequantized data u = (x + noise) / levels of integer pixels x, a density p on
  [0, 1]^D bounds the probability of the discrete data, log P(x) >= E_noise[log p(u)] - D ln(levels), so
  bits/dim = -(log p(u) - D ln levels) / (D ln 2), with log p(u) the exact evidence where the model has one,
  else estimated by the IWAE bound. This makes numbers comparable across likelihoods and with the literature.

``aevb.fitting.evaluate_run`` evaluates a run directory on the test set it rebuilds from the run's flags.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from aevb import distributed
from aevb.elbo import IWAE_CHUNK
from aevb.model import LatentVariableModel


@contextmanager
def eval_mode(model: LatentVariableModel) -> Iterator[torch.device]:
    """Dropout off and no gradients inside; the model's mode restored after. Yields its device."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def in_batches(tensors: Sequence[Tensor], batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, ...]]:
    """The rows of ``tensors`` in order, ``batch_size`` at a time, on ``device``."""
    for start in range(0, len(tensors[0]), batch_size):
        yield tuple(t[start:start + batch_size].to(device) for t in tensors)


def mean_over_ranks(local_sum: Callable[[], Tensor], count: int) -> Tensor:
    """``local_sum()``, a sum over this rank's shard of ``count`` rows, summed over the ranks and divided by
    ``count``; 0-dim. An error in ``local_sum`` on one rank is raised on every rank (``distributed.together``), not
    left for the others to wait on in the sum."""
    if not count:
        raise ValueError("no examples to evaluate on: the test set is empty")
    total = distributed.together(local_sum).reshape(1)
    distributed.all_reduce_sum([total])
    return total[0] / count


def shard(tensors: Sequence[Tensor]) -> list[Tensor]:
    """This rank's rows of ``tensors`` (all of them in one process)."""
    return [t[distributed.shard(len(t))] for t in tensors]


def rows_over_ranks(fn: Callable[..., Tensor], tensors: Sequence[Tensor], batch_size: int,
                    device: torch.device) -> Tensor:
    """``fn(*batch)`` for every row of ``tensors``, concatenated in order on the CPU; under torch.distributed each
    rank computes its shard and the shards are gathered (a rank's shard is empty when there are fewer rows than
    ranks; an error on one rank is raised on every rank: ``distributed.together``)."""
    mine = distributed.together(lambda: [fn(*batch).cpu() for batch in in_batches(shard(tensors), batch_size, device)])
    return torch.cat([part for parts in distributed.all_gather(mine) for part in parts])


def mean_per_example(per_example: Callable[..., Tensor], model: LatentVariableModel, tensors: Sequence[Tensor],
                     batch_size: int) -> Tensor:
    """Mean of ``per_example(*batch)`` (B,) over the rows of ``tensors`` = (x, *context), in eval mode; 0-dim.
    Under torch.distributed each rank takes its shard of the rows."""
    with eval_mode(model) as device:
        return mean_over_ranks(lambda: sum(
            (per_example(*batch).sum() for batch in in_batches(shard(tensors), batch_size, device)),
            torch.zeros((), device=device)), len(tensors[0]))


def test_elbo(model: LatentVariableModel, tensors: Sequence[Tensor], batch_size: int = 1000) -> Tensor:
    """Mean one-sample ELBO over the rows of ``tensors`` = (x, *context); a 0-dim tensor, nats per example."""
    return mean_per_example(lambda *batch: model.elbo(*batch).elbo, model, tensors, batch_size)


def test_log_evidence(model: LatentVariableModel, tensors: Sequence[Tensor], batch_size: int = 1000) -> Tensor:
    """Mean exact log p(x) (``model.log_evidence``, where the model has it) over the rows of ``tensors``; 0-dim."""
    return mean_per_example(model.log_evidence, model, tensors, batch_size)


def iwae_log_likelihood(
    model: LatentVariableModel, tensors: Sequence[Tensor], num_samples: int, batch_size: int = 100,
    chunk_size: int = IWAE_CHUNK, progress: bool = True
) -> Tensor:
    """Mean K-sample importance-weighted bound on log p(x) (or log p(x | context)); a 0-dim tensor.

    With ``progress``, shows a progress bar in a terminal (K forward passes over the test set can take minutes
    on a CPU). Under
    torch.distributed each rank takes its shard of the rows.
    """
    mine = shard(tensors)
    with eval_mode(model) as device:
        batches = tqdm(in_batches(mine, batch_size, device), total=math.ceil(len(mine[0]) / batch_size),
                       desc=f"IWAE bound, K = {num_samples}", unit="batch", leave=False,
                       disable=None if progress and distributed.rank() == 0 else True)
        return mean_over_ranks(lambda: sum(
            (model.iwae_bound(*batch, num_samples=num_samples, chunk_size=chunk_size).sum() for batch in batches),
            torch.zeros((), device=device)), len(tensors[0]))


def bits_per_dim(log_density: float, data_dim: int, levels: int, log_evidence_offset: float | None = None) -> float:
    """-(log p(v) - D ln levels) / (D ln 2): bits per pixel of the discrete data behind dequantized v, from the
    log-density of v, or of its standardization u given ``log_evidence_offset`` = log p(v) - log p(u)."""
    log_density += log_evidence_offset or 0.0
    return -(log_density - data_dim * math.log(levels)) / (data_dim * math.log(2))


STANDARDIZED = ("each value centred by its training mean and divided by its training standard deviation: "
                "log-densities are of the standardized data u; add log_evidence_offset for the data's units")


def standardized_entries(log_evidence_offset: float | None) -> dict:
    """A summary's ``preprocessing`` and ``log_evidence_offset`` where the data were standardized (the offset given),
    else none."""
    return {} if log_evidence_offset is None else {"preprocessing": STANDARDIZED,
                                                   "log_evidence_offset": log_evidence_offset}


def evidence_name(tensors: Sequence[Tensor], standardized: bool = False) -> str:
    """What a model's bounds on ``tensors`` are of: ``log p(x)``, ``log p(x | y)`` where the batches carry class
    labels y, ``log p(x | c)`` where they carry another context c; ``u`` for ``x`` where x was standardized."""
    x = "u" if standardized else "x"
    if len(tensors) == 1:
        return f"log p({x})"
    return f"log p({x} | {'c' if len(tensors) > 2 or tensors[1].is_floating_point() else 'y'})"


def evaluate(
    model: LatentVariableModel, tensors: Sequence[Tensor], num_samples: int, levels: int | None = None, seed: int = 0,
    progress: bool = True, log_evidence_offset: float | None = None
) -> dict:
    """Summary keys ``evidence`` (what the bounds are of, ``evidence_name``), ``test_elbo``, ``iwae_log_likelihood``
    and ``iwae_samples`` (K = 0: no IWAE), ``test_log_evidence`` (the exact mean) where the model has
    ``log_evidence``, and ``bits_per_dim`` given ``levels`` (D is the size of one example, all of a sequence's
    steps; from the exact evidence where there is one, else from the IWAE bound). Where the data x were
    standardized, u = (x - m) / s, ``log_evidence_offset`` = log p(x) - log p(u) = -sum log s: the bounds are of u,
    the summary holds the offset (and says so, ``preprocessing``), and bits/dim are of x.

    Seeded, so the same model, data and K give the same numbers; the caller's random state is left as it was.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        summary = {"evidence": evidence_name(tensors, log_evidence_offset is not None),
                   "test_elbo": test_elbo(model, tensors).item()}
        if num_samples:
            summary.update(iwae_log_likelihood=iwae_log_likelihood(model, tensors, num_samples, progress=progress).item(),
                           iwae_samples=num_samples)
    if callable(getattr(model, "log_evidence", None)):
        summary["test_log_evidence"] = test_log_evidence(model, tensors).item()
    summary.update(standardized_entries(log_evidence_offset))
    log_density = summary.get("test_log_evidence", summary.get("iwae_log_likelihood"))
    if levels is not None and log_density is not None:
        summary["bits_per_dim"] = bits_per_dim(log_density, tensors[0][0].numel(), levels, log_evidence_offset)
    return summary
