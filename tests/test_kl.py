"""The KLs aevb registers with torch.distributions, against torch's own formula and a Monte Carlo estimate."""
import pytest
import torch
from torch.distributions import Gamma, Independent, LogNormal, MultivariateNormal, Normal, Poisson, kl_divergence

import aevb.kl  # noqa: F401  (registers the KLs under test)
from aevb.elbo import elbo


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


def test_the_aevb_estimator_samples_a_kl_the_registry_lacks():
    """KL(LogNormal || Gamma) has no closed form in torch: "aevb" then samples it as "sgvb" does (the same ELBO,
    drawn from the same z), one value per example whatever the number of draws."""
    torch.manual_seed(0)
    q = Independent(LogNormal(torch.randn(4, 3), torch.rand(4, 3) + 0.1), 1)
    p = Independent(Gamma(torch.full((3,), 2.0), 1.0), 1)
    x = torch.poisson(torch.ones(4, 3))
    with pytest.raises(NotImplementedError):
        kl_divergence(q, p)
    for draws in (1, 5):
        estimates = []
        for estimator in ("aevb", "sgvb"):
            torch.manual_seed(1)
            estimates.append(elbo(x, q, p, lambda z: Independent(Poisson(z), 1), estimator, draws))
        assert estimates[0].elbo.shape == (4,) and estimates[0].elbo.isfinite().all()
        torch.testing.assert_close(estimates[0], estimates[1])
