"""The KLs aevb registers with torch.distributions, against torch's own formula and a Monte Carlo estimate."""
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import aevb.kl  # noqa: F401  (registers the KL under test)


def test_full_gaussian_against_diagonal_gaussian():
    torch.manual_seed(0)
    a = torch.randn(5, 3, 3, dtype=torch.float64)
    q = MultivariateNormal(torch.randn(5, 3, dtype=torch.float64), scale_tril=a.tril(-1) + torch.diag_embed(a.diagonal(dim1=-2, dim2=-1).exp()))
    loc, scale = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64) + 0.5
    p = Independent(Normal(loc, scale), 1)
    kl = kl_divergence(q, p)
    torch.testing.assert_close(kl, kl_divergence(q, MultivariateNormal(loc, scale_tril=torch.diag_embed(scale))))
    z = q.sample((200_000,))
    monte_carlo = q.log_prob(z) - p.log_prob(z)
    assert ((monte_carlo.mean(0) - kl).abs() < 4 * monte_carlo.std(0) / 200_000**0.5).all()


def test_diagonal_gaussian_against_full_gaussian():
    torch.manual_seed(1)
    a = torch.randn(5, 3, 3, dtype=torch.float64)
    p = MultivariateNormal(torch.randn(5, 3, dtype=torch.float64), scale_tril=a.tril(-1) + torch.diag_embed(a.diagonal(dim1=-2, dim2=-1).exp()))
    loc, scale = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64) + 0.5
    q = Independent(Normal(loc, scale), 1)
    kl = kl_divergence(q, p)
    z = q.sample((200_000,))
    monte_carlo = q.log_prob(z) - p.log_prob(z)
    assert ((monte_carlo.mean(0) - kl).abs() < 4 * monte_carlo.std(0) / 200_000**0.5).all()
