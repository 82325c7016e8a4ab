"""Likelihood heads p(x | ·): a decoder network's D raw outputs turned into a distribution over x in R^D.

* ``cb``: x in [0, 1]^D ~ prod_d ContinuousBernoulli(lambda_d), lambda = sigmoid(output) (tutorial §5.3,
  for dequantized images; its log-density is often positive, so image ELBOs in nats are positive), with the
  exact normalizer of ``aevb.continuous_bernoulli``;
* ``cb-clamped``: the same with torch's ``ContinuousBernoulli``, whose normalizer is computed from lambda clamped to
  [eps, 1 - eps] in float32 (stuck beyond |output| ~ 15.9, with zero gradient beyond 16.6): the tutorial's
  density, for comparison with its numbers. Its density integrates to less than 1 where clamped, but to up to
  1.026 just below (float32 rounding of lambda, worst near |output| = 15.5), so its log-densities bound the data's
  only approximately;
* ``bernoulli``: x in {0, 1}^D ~ prod_d Bernoulli(p_d), p = sigmoid(output) (binarized images, §5.5);
* ``gaussian``: x in R^D ~ N(output, diag(sigma^2)), sigma a learned per-pixel vector (independent of z)
  or, with ``scale`` given, that fixed number.

Each head returns ``Independent(base, 1)``, so ``log_prob`` sums over the D pixels: shape (..., D) -> (...).
The models' Gaussians over z, priors and posteriors, are built here too: ``diagonal_normal`` and
``standard_normal``. Distributions are built with validate_args=False: data are validated once, at the data
boundary (``aevb.data.validate_support``), not on every step.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal
from torch.distributions import ContinuousBernoulli as ClampedContinuousBernoulli

from aevb.continuous_bernoulli import ContinuousBernoulli

Likelihood = Literal["cb", "cb-clamped", "bernoulli", "gaussian"]
LIKELIHOODS = get_args(Likelihood)


def diagonal_normal(loc: Tensor, scale: Tensor) -> Independent:
    """N(loc, diag(scale^2)) for loc and scale of shape (..., L): batch shape (...), event (L,)."""
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


def standard_normal(latent_dim: int, like: Tensor) -> Independent:
    """p(z) = N(0, I_L), batch shape (), on the device and dtype of ``like``."""
    zeros = like.new_zeros(latent_dim)
    return diagonal_normal(zeros, torch.ones_like(zeros))


class LikelihoodHead(nn.Module):
    """p(x | output) for a decoder output of shape (..., D); the Gaussian's per-pixel scale is a parameter."""

    def __init__(self, likelihood: str, data_dim: int, scale: float | None = None) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if scale is not None and not scale > 0:
            raise ValueError(f"the Gaussian likelihood's fixed scale must be positive, got {scale}")
        self.likelihood, self.fixed_scale = likelihood, scale
        if likelihood == "gaussian" and scale is None:
            self.raw_scale = nn.Parameter(torch.zeros(data_dim))  # sigma = softplus(raw_scale), (D,)

    def scale(self) -> Tensor | float:
        """The Gaussian's sigma: the fixed number, or softplus of the learned per-pixel vector (D,)."""
        return self.fixed_scale if self.fixed_scale is not None else F.softplus(self.raw_scale)

    def forward(self, output: Tensor) -> Independent:
        if self.likelihood == "cb":
            base = ContinuousBernoulli(logits=output, validate_args=False)
        elif self.likelihood == "cb-clamped":
            base = ClampedContinuousBernoulli(logits=output, validate_args=False)
        elif self.likelihood == "bernoulli":
            base = Bernoulli(logits=output, validate_args=False)
        else:
            base = Normal(output, self.scale(), validate_args=False)
        return Independent(base, 1, validate_args=False)


def parameter_image(p_x: Distribution) -> Tensor:
    """What a decoder 'draws' for one z: lambda (continuous Bernoulli), p (Bernoulli) or the mean (Gaussian).

    The tutorial's figures show lambda rather than the continuous Bernoulli's mean, which is pulled
    towards 1/2; these are the per-pixel parameters, shape (..., D).
    """
    base = p_x.base_dist if isinstance(p_x, Independent) else p_x
    return base.loc if isinstance(base, Normal) else base.probs
