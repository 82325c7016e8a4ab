"""The exact continuous Bernoulli: its normalizer against a 50-digit reference, gradients, and a proper density."""
import math
import os
import shutil

import mpmath
import pytest
import torch
from torch.distributions import ContinuousBernoulli as TorchContinuousBernoulli

from aevb.continuous_bernoulli import SMALL, ContinuousBernoulli, log_normalizer
from aevb.likelihoods import LikelihoodHead

mpmath.mp.dps = 50
# logits from -1000 to 1000: dense near 0 (where the Taylor branch meets the exact one) and out to the tails
LOGITS = sorted({*torch.linspace(-1000, 1000, 2001).tolist(), *torch.linspace(-1, 1, 401).tolist(),
                 *(s * 10.0 ** e for s in (-1, 1) for e in range(-30, 1)), SMALL, -SMALL, SMALL * (1 - 1e-7),
                 16.6, -16.6, 0.0})


def reference_log_normalizer(logit: float) -> float:
    """log C(l) = log(l / tanh(l / 2)) in 50-digit arithmetic (log 2 at l = 0)."""
    l = mpmath.mpf(logit)
    return float(mpmath.log(l / mpmath.tanh(l / 2))) if l != 0 else math.log(2)


def test_log_normalizer_is_exact_in_float32_from_minus_to_plus_1000():
    logits = torch.tensor(LOGITS, dtype=torch.float32)
    # the reference at the float32 logit actually evaluated
    expected = torch.tensor([reference_log_normalizer(l) for l in logits.tolist()], dtype=torch.float64)
    relative = ((log_normalizer(logits).double() - expected) / expected).abs()
    assert relative.max() <= 1e-5, f"worst at logit {logits[relative.argmax()]:g}: {relative.max():.2e}"


def test_torch_clamped_normalizer_is_what_this_one_corrects():
    """The defect this distribution exists for: in float32 torch's log C is stuck beyond |l| ~ 15.9, with zero
    gradient beyond 16.6."""
    logits = torch.tensor([20.0, 500.0], requires_grad=True)
    clamped = TorchContinuousBernoulli(logits=logits)._cont_bern_log_norm()
    assert clamped[1].item() - reference_log_normalizer(500.0) == pytest.approx(-3.45, abs=0.01)
    assert torch.autograd.grad(clamped.sum(), logits)[0].abs().max() == 0
    assert TorchContinuousBernoulli(logits=torch.tensor(16.0))._cont_bern_log_norm() == clamped[1]  # stuck from 15.9
    exact = log_normalizer(logits)
    gradient = torch.autograd.grad(exact.sum(), logits)[0]
    torch.testing.assert_close(gradient, 1 / logits.detach() - 1 / torch.sinh(logits.detach()))


def test_gradients_stay_finite_for_any_finite_logit():
    """However large a logit gets (a diverging fit's 1e30), the branch not taken passes no NaN to the gradient."""
    logits = torch.tensor([-3e38, -1e30, -1e6, -20.0, -0.05, 0.0, 1e-30, 0.05, 20.0, 1e6, 1e30, 3e38], requires_grad=True)
    d = ContinuousBernoulli(logits)
    total = d.log_prob(torch.full_like(logits, 0.3)).sum() + d.mean.sum() + d.icdf(torch.full_like(logits, 0.7)).sum()
    (gradient,) = torch.autograd.grad(total, logits)
    assert torch.isfinite(gradient).all()


@pytest.mark.parametrize("logits", [[-500.0, -30.0, -3.0, -0.3, -0.05, 0.0, 0.02, 0.09, 0.11, 2.0, 40.0, 700.0]])
def test_gradients_are_correct_in_float64(logits):
    l = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    x = torch.linspace(0, 1, len(logits), dtype=torch.float64)
    u = torch.linspace(0.01, 0.99, len(logits), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda l: ContinuousBernoulli(l).log_prob(x), (l,))
    assert torch.autograd.gradcheck(lambda l: ContinuousBernoulli(l).mean, (l,))
    assert torch.autograd.gradcheck(lambda l: ContinuousBernoulli(l).icdf(u), (l,))


@pytest.mark.parametrize("logit", [-1000.0, -40.0, -3.0, -0.05, 0.0, 1e-4, 0.5, 17.0, 300.0])
def test_density_integrates_to_one_and_has_its_mean(logit):
    """Trapezoid rule on a grid fine enough for the narrowest density (scale 1/1000)."""
    x = torch.linspace(0, 1, 2_000_001, dtype=torch.float64)
    d = ContinuousBernoulli(torch.tensor(logit, dtype=torch.float64))
    density = d.log_prob(x).exp()
    assert torch.trapezoid(density, x).item() == pytest.approx(1, abs=1e-6)
    assert d.mean.item() == pytest.approx(torch.trapezoid(x * density, x).item(), abs=1e-6)


def test_float32_log_prob_and_mean_agree_with_torch_in_float64_where_its_clamp_is_harmless():
    logits = torch.linspace(-30, 30, 601)
    x = torch.rand(601, generator=torch.Generator().manual_seed(0))
    ours = ContinuousBernoulli(logits)
    theirs = TorchContinuousBernoulli(logits=logits.double())
    torch.testing.assert_close(ours.log_prob(x).double(), theirs.log_prob(x.double()), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours.mean.double(), theirs.mean, atol=1e-6, rtol=1e-5)
    far = torch.tensor([-1e6, -1e3, 1e3])  # the mean tends to -1/l below, 1 - 1/l above
    torch.testing.assert_close(ContinuousBernoulli(far).mean, torch.tensor([1e-6, 1e-3, 1 - 1e-3]), atol=0, rtol=1e-5)


def test_rsample_inverts_the_cdf_and_draws_from_the_density():
    logits = torch.tensor([-800.0, -25.0, -2.0, -1e-8, 0.0, 0.3, 5.0, 90.0], dtype=torch.float64)
    u = torch.rand(10_000, len(logits), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = ContinuousBernoulli(logits).icdf(u)
    assert ((x >= 0) & (x <= 1)).all()
    # F(x) = expm1(l x) / expm1(l) (x itself at l = 0)
    cdf = torch.where(logits == 0, x, torch.expm1(logits * x) / torch.expm1(torch.where(logits == 0, 1.0, logits)))
    torch.testing.assert_close(cdf, u, atol=1e-9, rtol=1e-9)
    torch.manual_seed(2)
    draws = ContinuousBernoulli(logits.float()).sample((20_000,))  # (20000, 8), float32 throughout
    assert torch.isfinite(draws).all() and ((draws >= 0) & (draws <= 1)).all()
    torch.testing.assert_close(draws.double().mean(0), ContinuousBernoulli(logits).mean, atol=0.01, rtol=0)
    l = logits.clone().requires_grad_()
    torch.manual_seed(3)
    reparameterized = ContinuousBernoulli(l).rsample((5,))  # the icdf of uniforms, differentiable in the logits
    torch.manual_seed(3)
    torch.testing.assert_close(reparameterized, ContinuousBernoulli(logits).icdf(torch.rand(5, 8, dtype=torch.float64)))
    (gradient,) = torch.autograd.grad(reparameterized.sum(), l)
    assert torch.isfinite(gradient).all() and (gradient[logits.abs() < 100] != 0).all()


def test_a_batched_distribution_expands_and_keeps_probs_as_lambda():
    d = ContinuousBernoulli(torch.zeros(3))
    assert d.expand((4, 3)).log_prob(torch.full((4, 3), 0.25)).shape == (4, 3)
    torch.testing.assert_close(ContinuousBernoulli(torch.tensor([2.0])).probs, torch.sigmoid(torch.tensor([2.0])))


def test_the_likelihood_heads_are_exact_and_torchs_clamped_one_for_comparison():
    logits, x = torch.tensor([[100.0, -3.0]]), torch.tensor([[0.999, 0.2]])
    exact = LikelihoodHead("cb", data_dim=2)(logits).log_prob(x)
    clamped = LikelihoodHead("cb-clamped", data_dim=2)(logits).log_prob(x)
    torch.testing.assert_close(exact, ContinuousBernoulli(logits).log_prob(x).sum(-1))
    torch.testing.assert_close(clamped, TorchContinuousBernoulli(logits=logits).log_prob(x).sum(-1))
    assert clamped < exact - 1  # at logit 100 the clamped normalizer misses more than a nat


def reference_log_prob(logits: torch.Tensor, x: float) -> torch.Tensor:
    """l x - log(expm1(l) / l) in 50-digit arithmetic at each float32 logit (Z(0) = 1), as float64."""
    return torch.tensor([float(mpmath.mpf(l) * x - mpmath.log(mpmath.expm1(l) / l)) if l else 0.0
                         for l in logits.tolist()], dtype=torch.float64)


def test_float32_log_prob_is_the_50_digit_density_from_minus_to_plus_1000():
    """log p(x | l) = l x - log(expm1(l) / l): off by no more than float32 rounding of terms of size |l|."""
    logits = torch.tensor(LOGITS, dtype=torch.float32)
    for x in (0.0, 0.3, 1.0):
        error = (ContinuousBernoulli(logits).log_prob(torch.full_like(logits, x)).double() - reference_log_prob(logits, x)).abs()
        allowed = 4e-7 * (1 + logits.double().abs())
        assert (error <= allowed).all(), f"x = {x}: worst at logit {logits[(error / allowed).argmax()]:g}"


def test_log_prob_stays_exact_where_expm1_is_computed_as_exp_minus_1(monkeypatch):
    """torch.compile's CPU code computes expm1(x) as exp(x) - 1 (0 for |x| < 6e-8): compiled, log p must not depend
    on expm1 near l = 0, where that loses every digit (log Z = -inf there before the series branch). The compiled
    path, run eagerly with such an expm1."""
    logits = torch.tensor(LOGITS, dtype=torch.float32)
    monkeypatch.setattr(torch, "expm1", lambda t: torch.exp(t) - 1)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    error = (ContinuousBernoulli(logits).log_prob(torch.full_like(logits, 0.3)).double() - reference_log_prob(logits, 0.3)).abs()
    allowed = 2e-6 * (1 + logits.double().abs())  # exp(-a) - 1 costs a few float32 roundings relative to a >= SMALL
    assert (error <= allowed).all(), f"worst at logit {logits[(error / allowed).argmax()]:g}: {error.max():.2e}"


@pytest.mark.compile
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_log_prob_and_its_gradient_equal_eagers():
    logits = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    x = torch.rand(logits.shape, generator=torch.Generator().manual_seed(0))
    log_prob = lambda logits: ContinuousBernoulli(logits).log_prob(x)  # noqa: E731
    compiled = torch.compile(log_prob)(logits)
    eager = log_prob(logits)
    assert torch.isfinite(compiled).all()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=2e-6)
    gradients = [torch.autograd.grad(value.sum(), logits)[0] for value in (compiled, eager)]
    # the mean -1/expm1(-l) - 1/l, for |l| >= SMALL: compiled, exp(-l) - 1 costs up to 4e-6 next to |l| = SMALL
    torch.testing.assert_close(*gradients, rtol=1e-5, atol=1e-5)
