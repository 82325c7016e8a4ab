"""KL divergences that torch.distributions does not register, added to its registry.

torch knows KL(MultivariateNormal || MultivariateNormal) but not a full-covariance Gaussian against a
diagonal one, the pair of an FA posterior N(m, C C^T) and its prior N(0, I). With p diagonal the general
formula needs no triangular solves:

    KL(N(m, C C^T) || N(mu, diag s^2)) = 1/2 [ ||diag(s)^-1 C||_F^2 + ||diag(s)^-1 (m - mu)||^2 - L + 2 sum log s
                                             - 2 sum log diag C ]

The reverse pair, a mean-field q N(m, diag s^2) against a full-covariance p (FA's diagonal posterior against the
exact one), is torch's Gaussian KL with q written as a MultivariateNormal.

(``kl_divergence`` then picks them up; the tests check it against the MVN-MVN formula and a Monte Carlo estimate.)
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence, register_kl


@register_kl(MultivariateNormal, Independent)
def kl_multivariate_normal_diagonal_normal(q: MultivariateNormal, p: Independent) -> Tensor:
    if not isinstance(p.base_dist, Normal) or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError("KL(MultivariateNormal || Independent) is defined for Independent(Normal, 1) only")
    scale = p.base_dist.scale  # (..., L)
    trace = (q.scale_tril / scale.unsqueeze(-1)).pow(2).sum((-2, -1))
    mahalanobis = ((q.loc - p.base_dist.loc) / scale).pow(2).sum(-1)
    log_det_ratio = 2 * (scale.log().sum(-1) - q.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1))
    return 0.5 * (trace + mahalanobis - q.event_shape[0] + log_det_ratio)


@register_kl(Independent, MultivariateNormal)
def kl_diagonal_normal_multivariate_normal(q: Independent, p: MultivariateNormal) -> Tensor:
    if not isinstance(q.base_dist, Normal) or q.reinterpreted_batch_ndims != 1:
        raise NotImplementedError("KL(Independent || MultivariateNormal) is defined for Independent(Normal, 1) only")
    return kl_divergence(MultivariateNormal(q.base_dist.loc, scale_tril=torch.diag_embed(q.base_dist.scale)), p)
