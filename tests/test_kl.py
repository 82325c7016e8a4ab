"""The KLs aevb registers with torch.distributions, against torch's own formula and a Monte Carlo estimate."""
import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import aevb.kl  # noqa: F401  (registers the KLs under test)


def gaussians(seed: int) -> tuple[MultivariateNormal, Independent]:
    """A batch of 5 full-covariance Gaussians and 5 diagonal ones in 3 dimensions, float64."""
    torch.manual_seed(seed)
    a = torch.randn(5, 3, 3, dtype=torch.float64)
    full = MultivariateNormal(torch.randn(5, 3, dtype=torch.float64),
                              scale_tril=a.tril(-1) + torch.diag_embed(a.diagonal(dim1=-2, dim2=-1).exp()))
    diagonal = Independent(Normal(torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64) + 0.5), 1)
    return full, diagonal


@pytest.mark.parametrize("full_first", [True, False], ids=["full-against-diagonal", "diagonal-against-full"])
def test_gaussian_kls_agree_with_torch_and_with_monte_carlo(full_first):
    full, diagonal = gaussians(0 if full_first else 1)
    q, p = (full, diagonal) if full_first else (diagonal, full)
    kl = kl_divergence(q, p)
    as_full = MultivariateNormal(diagonal.base_dist.loc, scale_tril=torch.diag_embed(diagonal.base_dist.scale))
    torch.testing.assert_close(kl, kl_divergence(full, as_full) if full_first else kl_divergence(as_full, full))
    z = q.sample((200_000,))
    monte_carlo = q.log_prob(z) - p.log_prob(z)
    assert ((monte_carlo.mean(0) - kl).abs() < 4 * monte_carlo.std(0) / 200_000**0.5).all()
