"""Factor analysis: every quantity of the EM view checked against closed forms and references."""
import pytest
import torch
from sklearn.decomposition import FactorAnalysis as SklearnFA
from torch.distributions import kl_divergence

from aevb.models.fa import FactorAnalysis, FAConfig, fit_em, synthetic_data, tutorial_model
from aevb.trainer import Trainer


def random_model(data_dim=4, latent_dim=2, posterior="full", seed=0) -> FactorAnalysis:
    """FA with random generative parameters and a random (not the exact) Gaussian q, in float64."""
    torch.manual_seed(seed)
    model = FactorAnalysis(FAConfig(data_dim, latent_dim, posterior)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


@pytest.mark.parametrize("posterior", ["full", "diagonal"])
def test_gap_identity_log_evidence_equals_elbo_plus_kl_to_exact_posterior(posterior):
    model = random_model(posterior=posterior)
    x = torch.randn(50, 4, dtype=torch.float64) * 2
    gap = model.log_evidence(x) - model.expected_elbo(x)
    kl = kl_divergence(model.inference(x), model.p_z_given_x(x))
    assert (gap > 0).all()
    torch.testing.assert_close(gap, kl, atol=1e-5, rtol=0)


def test_exact_e_step_makes_the_bound_tight():
    model = random_model()
    x = torch.randn(20, 4, dtype=torch.float64)
    model.e_step()
    torch.testing.assert_close(model.expected_elbo(x), model.log_evidence(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("estimator", ["aevb", "sgvb"])
def test_single_sample_estimators_are_unbiased(estimator):
    model = random_model(data_dim=3)
    x = torch.randn(1, 3, dtype=torch.float64).expand(20_000, 3)
    estimates = model.elbo(x, estimator=estimator).elbo
    standard_error = estimates.std() / len(estimates) ** 0.5
    assert abs(estimates.mean() - model.expected_elbo(x[:1])[0]) < 4 * standard_error


def test_aevb_has_lower_variance_than_sgvb():
    model = random_model(data_dim=3)
    x = torch.randn(1, 3, dtype=torch.float64).expand(5_000, 3)
    assert model.elbo(x, estimator="aevb").elbo.var() < model.elbo(x, estimator="sgvb").elbo.var()


def test_iwae_bound_rises_with_k_and_stays_below_the_log_evidence():
    model = tutorial_model(torch.float64)
    with torch.no_grad():  # move q away from the exact posterior, so that there is a gap to close
        model.inference.weight.add_(0.5)
    x = model.sample(8).repeat(500, 1)  # 500 independent bounds per point
    bounds = [model.iwae_bound(x, num_samples=k, chunk_size=16) for k in (1, 10, 100)]
    log_evidence = model.log_evidence(x).mean()
    means = [b.mean() for b in bounds]
    assert means[0] < means[1] < means[2] < log_evidence
    standard_error = bounds[0].std() / len(x) ** 0.5
    assert abs(means[0] - model.expected_elbo(x).mean()) < 4 * standard_error  # IWAE(1) is the ELBO in expectation


def test_exact_em_agrees_with_scikit_learn():
    _, x, _ = synthetic_data(num_train=500, seed=3)
    x = (x - x.mean(0)).double()
    ours = fit_em(x, latent_dim=2).log_evidence(x).mean().item()
    theirs = SklearnFA(n_components=2, tol=1e-10, max_iter=10_000).fit(x.numpy()).score(x.numpy())
    assert abs(ours - theirs) < 1e-3


def test_exact_em_increases_the_log_likelihood_monotonically():
    _, x, _ = synthetic_data(num_train=300, seed=1)
    torch.manual_seed(0)
    model = FactorAnalysis(FAConfig()).double()
    x = x.double()
    values = []
    for _ in range(30):
        model.e_step()
        model.m_step(x)
        values.append(model.log_evidence(x).mean().item())
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


def test_exact_em_recovers_the_generating_covariance():
    true_model, x, _ = synthetic_data(num_train=20_000, seed=0)
    fitted = fit_em(x, latent_dim=2)
    torch.testing.assert_close(fitted.p_x().covariance_matrix.float(), true_model.p_x().covariance_matrix, atol=0.08, rtol=0)


def test_synthetic_data_is_reproducible_from_the_seed():
    assert torch.equal(synthetic_data(seed=5)[1], synthetic_data(seed=5)[1])
    assert not torch.equal(synthetic_data(seed=5)[1], synthetic_data(seed=6)[1])


@pytest.mark.parametrize("phase, moved, frozen", [("e-step", "inference", "generative"), ("m-step", "generative", "inference")])
def test_a_phase_moves_only_its_parameter_group(phase, moved, frozen):
    _, x_train, _ = synthetic_data(num_train=64, seed=0)
    model = FactorAnalysis(FAConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, phase, lr=1e-2, batch_size=32, progress=False).fit((x_train,), steps=5)
    for name, value in model.state_dict().items():
        unchanged = torch.equal(value, before[name])
        assert unchanged == name.startswith(frozen), name
