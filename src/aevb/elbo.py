"""ELBO estimators, model-agnostic.

For data x and a latent z with prior p(z), likelihood p(x|z) and approximate posterior q(z|x):

    log p(x) = ELBO(x) + KL(q(z|x) || p(z|x)),    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)).

* ``aevb``: one reparameterized draw z = g(eps, x) for the expected log-likelihood and the analytic
  KL(q || p) from ``torch.distributions``' registry (Kingma & Welling's second estimator); for a pair of
  distributions the registry has no KL for (a LogNormal q and a Gamma p), the sampled one of ``sgvb``, as Pyro's
  ``TraceMeanField_ELBO`` does: the same ELBO, estimated with more variance.
* ``sgvb``: the KL is sampled too, log q(z|x) - log p(z) at the same draw (their first estimator).
* ``iwae_bound``: the K-sample importance-weighted bound
  log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q, which rises with K towards log p(x).

Models describe their factors; they do not re-implement these estimators.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

import aevb.kl  # noqa: F401  (registers the KLs torch.distributions lacks)

ESTIMATORS = ("aevb", "sgvb")


class ELBO(NamedTuple):
    """Per-example ELBO estimate and its two terms, each of shape (B,): elbo = log_likelihood - kl.

    ``objective`` (B,) is what a training step ascends where a model's schedule makes it differ from the ELBO
    (a warm-up that weights a KL term); None: the ELBO itself. The trainer records the ELBO either way."""

    elbo: Tensor
    log_likelihood: Tensor
    kl: Tensor
    objective: Tensor | None = None


def kl_term(q: Distribution, p: Distribution, z: Tensor, estimator: str) -> Tensor:
    """KL(q || p): analytic for ``aevb`` (where the registry has it), the one-sample estimate log q(z) - log p(z)
    for ``sgvb``."""
    if estimator == "aevb":
        try:
            return kl_divergence(q, p)
        except NotImplementedError:
            estimator = "sgvb"
    if estimator == "sgvb":
        return q.log_prob(z) - p.log_prob(z)
    raise ValueError(f"unknown ELBO estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def elbo(
    x: Tensor,
    q_z: Distribution,
    p_z: Distribution,
    p_x_given_z: Callable[[Tensor], Distribution],
    estimator: str = "aevb",
    num_samples: int = 1,
) -> ELBO:
    """Estimate of E_q[log p(x|z)] - KL(q(z|x) || p(z)) averaged over S = ``num_samples`` reparameterized draws
    z_s = q_z.rsample() (one for training; more for a lower-variance estimate); shapes (B,)."""
    sample_shape = (num_samples,) if num_samples > 1 else ()  # one draw keeps z (B, L), as a training step has it
    z = reparameterized_sample(q_z, sample_shape)  # (S, B, L) or (B, L)
    log_likelihood = p_x_given_z(z).log_prob(x)
    kl = kl_term(q_z, p_z, z, estimator)
    if sample_shape:  # the analytic KL is (B,) already; the sampled one has a value per draw
        log_likelihood, kl = log_likelihood.mean(0), kl.mean(0) if kl.dim() == log_likelihood.dim() else kl
    return ELBO(log_likelihood - kl, log_likelihood, kl)


def log_importance_weights(
    x: Tensor,
    q_z: Distribution,
    p_z: Distribution,
    p_x_given_z: Callable[[Tensor], Distribution],
    num_samples: int,
) -> Tensor:
    """log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x), z_k ~ q(z|x); shape (K, B)."""
    z = reparameterized_sample(q_z, (num_samples,))  # (K, B, L)
    return p_x_given_z(z).log_prob(x) + p_z.log_prob(z) - q_z.log_prob(z)


def reparameterized_sample(q_z: Distribution, sample_shape: tuple[int, ...]) -> Tensor:
    """``q_z.rsample(sample_shape)``; a TypeError saying what to do for a family without one."""
    if not q_z.has_rsample:
        raise TypeError(f"q(z|x) is a {type(q_z).__name__}, which has no reparameterized sample (rsample) for AEVB: "
                        "use a relaxation of it (e.g. RelaxedOneHotCategorical), or override elbo() and "
                        "log_importance_weights() to sum the latent out (as aevb.models.gmvae does)")
    return q_z.rsample(sample_shape)


# Draws per chunk of the IWAE bound: at batch 100, chunks of 2,000 rows. On this project's CPU (2 threads, the MNIST
# VAE's decoder) a draw took 36 us in chunks of 2,000 rows and 50 us in chunks of 10,000, whose tensors leave the cache.
IWAE_CHUNK = 20


def iwae_bound(log_weights: Callable[[int], Tensor], num_samples: int, chunk_size: int = IWAE_CHUNK) -> Tensor:
    """log (1/K) sum_k w_k, with the K weights drawn ``chunk_size`` at a time; shape (B,).

    ``log_weights(k)`` returns k fresh log-weights per example, shape (k, B). Chunks are combined
    with a running log-sum-exp, so memory stays bounded for any K.
    """
    if num_samples < 1:
        raise ValueError(f"the number of importance samples must be at least 1, got {num_samples}")
    total = None
    for start in range(0, num_samples, chunk_size):
        chunk = torch.logsumexp(log_weights(min(chunk_size, num_samples - start)), dim=0)
        total = chunk if total is None else torch.logaddexp(total, chunk)
    return total - math.log(num_samples)
