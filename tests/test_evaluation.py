"""Evaluation: the ELBO <= IWAE(K) ordering, IWAE(1) = ELBO in expectation, normalized likelihood heads,
bits per dimension, and evaluation that is seeded, batched and leaves the model's mode alone."""
import math

import pytest
import torch
from scipy.integrate import quad

from aevb import evaluation
from aevb.fitting import draw
from aevb.likelihoods import LikelihoodHead
from aevb.models.cvae import CVAE, CVAEConfig
from aevb.models.vae import VAE, VAEConfig

D, L, C = 10, 3, 3


def small_model(conditional: bool):
    """A small model in float64 with its batch (x, *context) of 8 examples in [0, 1]."""
    torch.manual_seed(0)
    config = dict(data_dim=D, latent_dim=L, hidden=(16,))
    model = (CVAE(CVAEConfig(**config, num_classes=C)) if conditional else VAE(VAEConfig(**config))).double().eval()
    x = torch.rand(8, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, (x, torch.arange(8) % C) if conditional else (x,)


@pytest.mark.parametrize("conditional", [False, True])
def test_elbo_below_iwae_bounds_rising_with_k(conditional):
    model, batch = small_model(conditional)
    repeats = 50
    repeated = tuple(t.repeat(repeats, *[1] * (t.dim() - 1)) for t in batch)  # each example `repeats` times
    torch.manual_seed(2)
    with torch.no_grad():
        elbo = model.elbo(*repeated).elbo.mean().item()
        iwae = {k: model.iwae_bound(*repeated, num_samples=k).mean().item() for k in (1, 10, 100)}
    assert elbo <= iwae[10] <= iwae[100]
    assert iwae[1] <= iwae[10]


@pytest.mark.parametrize("conditional", [False, True])
def test_iwae_with_one_sample_equals_the_elbo_in_expectation(conditional):
    """IWAE(1) = log p(x|z) + log p(z) - log q(z|x), a sampled-KL estimate of the ELBO: same mean."""
    model, batch = small_model(conditional)
    n = 4000
    torch.manual_seed(3)
    with torch.no_grad():
        iwae_1 = model.log_importance_weights(*batch, num_samples=n)  # (n, B)
        repeated = tuple(t.expand(n, *t.shape).reshape(-1, *t.shape[1:]) for t in batch)
        elbo = model.elbo(*repeated).elbo.reshape(n, -1)  # analytic KL: a lower-variance estimate
    difference = iwae_1.mean(0) - elbo.mean(0)  # (B,)
    standard_error = (iwae_1.var(0) / n + elbo.var(0) / n).sqrt()
    assert (difference.abs() < 4 * standard_error).all()


@pytest.mark.parametrize("lam", [0.01, 0.2, 0.499, 0.5, 0.5007, 0.8, 0.995])
def test_continuous_bernoulli_density_integrates_to_one(lam):
    """Including lambda in the unstable region near 1/2, where torch uses a Taylor expansion."""
    head = LikelihoodHead("cb", data_dim=1)
    logit = torch.tensor([math.log(lam / (1 - lam))], dtype=torch.float64)
    p = head(logit)

    def density(x: float) -> float:
        return p.log_prob(torch.tensor([x], dtype=torch.float64)).exp().item()

    total, _ = quad(density, 0, 1)
    assert total == pytest.approx(1, abs=1e-6)


def test_other_likelihood_heads_are_normalized():
    bernoulli = LikelihoodHead("bernoulli", data_dim=2)(torch.tensor([0.3, -1.2]))
    corners = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    assert bernoulli.log_prob(corners).exp().sum().item() == pytest.approx(1, abs=1e-6)
    gaussian = LikelihoodHead("gaussian", data_dim=1, scale=0.3)(torch.tensor([0.2], dtype=torch.float64))
    total, _ = quad(lambda x: gaussian.log_prob(torch.tensor([x], dtype=torch.float64)).exp().item(), -5, 5)
    assert total == pytest.approx(1, abs=1e-6)
    with pytest.raises(ValueError, match="unknown likelihood"):
        LikelihoodHead("poisson", 3)


def test_bits_per_dim_of_the_uniform_density_is_the_bits_of_the_levels():
    """The uniform density on [0, 1]^D (log p = 0) puts probability levels^-D on each discrete image."""
    assert evaluation.bits_per_dim(0.0, 784, 256) == pytest.approx(8.0)
    assert evaluation.bits_per_dim(0.0, 64, 17) == pytest.approx(math.log2(17))
    assert evaluation.bits_per_dim(784 * math.log(2), 784, 256) == pytest.approx(7.0)  # twice as dense: one bit less


def test_evaluation_is_seeded_batched_in_eval_mode_and_restores_the_mode():
    model, batch = small_model(conditional=True)
    in_eval_mode = evaluation.evaluate(model.eval(), batch, num_samples=50, levels=256, seed=7)
    first = evaluation.evaluate(model.train(), batch, num_samples=50, levels=256, seed=7)
    assert model.training  # restored
    assert first == in_eval_mode  # dropout (0.1) off while evaluating a model in training mode
    assert evaluation.evaluate(model, batch, num_samples=50, levels=256, seed=7) == first
    assert first["iwae_samples"] == 50 and first["iwae_log_likelihood"] >= first["test_elbo"]
    assert first["bits_per_dim"] == evaluation.bits_per_dim(first["iwae_log_likelihood"], D, 256)
    assert first["evidence"] == "log p(x | y)"  # the batches carry the label: bounds on the conditional evidence
    assert evaluation.evaluate(small_model(conditional=False)[0], batch[:1], 0)["evidence"] == "log p(x)"
    # batching changes only which noise each example gets: with many samples the estimates agree closely
    torch.manual_seed(0)
    one_batch = evaluation.iwae_log_likelihood(model, batch, 2000, batch_size=8, chunk_size=2000)
    torch.manual_seed(0)
    small_batches = evaluation.iwae_log_likelihood(model, batch, 2000, batch_size=3, chunk_size=64)
    assert small_batches.item() == pytest.approx(one_batch.item(), abs=0.05)


def test_a_model_with_an_exact_evidence_reports_it_beside_its_bounds():
    from aevb.models.fa import FactorAnalysis, FAConfig

    torch.manual_seed(0)
    model = FactorAnalysis(FAConfig(data_dim=3, latent_dim=2))
    x = model.sample(300)
    summary = evaluation.evaluate(model, (x,), num_samples=200, levels=256)
    assert summary["test_log_evidence"] == pytest.approx(model.log_evidence(x).mean().item(), rel=1e-6)
    assert summary["test_elbo"] < summary["iwae_log_likelihood"] < summary["test_log_evidence"] + 0.05
    assert summary["bits_per_dim"] == evaluation.bits_per_dim(summary["test_log_evidence"], 3, 256)  # not the bound's
    assert "test_log_evidence" not in evaluation.evaluate(*small_model(conditional=False), num_samples=0)


def test_draw_gives_one_row_per_class_for_a_conditional_model():
    model, _ = small_model(conditional=True)
    x, rows = draw(model, C, 4)
    assert x.shape == (4 * C, D) and rows == [str(c) for c in range(C)]
    x, rows = draw(model, C, 5, label=2)
    assert x.shape == (5, D) and rows == ["2"]
    vae, _ = small_model(conditional=False)
    x, rows = draw(vae, None, 6)
    assert x.shape == (6, D) and rows is None
