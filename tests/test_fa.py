"""Factor analysis: every quantity of the EM view checked against closed forms and references."""
import math

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


def constant_column_data(seed=3) -> torch.Tensor:
    """Tutorial data with a constant fourth column, centred and scaled to unit mean variance tr(S)/D = 1, in float64."""
    _, x, _ = synthetic_data(num_train=500, seed=seed)
    x = torch.cat([x, torch.full((len(x), 1), 5.0)], dim=1).double()
    x = x - x.mean(0)  # the fourth column is now exactly zero
    return x / x.pow(2).mean().sqrt()


def test_exact_em_floors_a_constant_columns_noise_variance_as_scikit_learn_does():
    x = constant_column_data()
    model = fit_em(x, latent_dim=2)
    reference = SklearnFA(n_components=2, tol=1e-10, max_iter=10_000).fit(x.numpy())
    ours = model.log_evidence(x).mean().item()
    assert math.isfinite(ours)
    # At unit mean variance our relative floor is scikit-learn's SMALL = 1e-12: the same floored noise variance and
    # the same score. (With L = 2 and three free columns the other noise variances are not identified.)
    constant_noise_var = model.generative.noise_std[3].item() ** 2
    assert constant_noise_var == pytest.approx(reference.noise_variance_[3], rel=1e-6)
    assert abs(ours - reference.score(x.numpy())) < 1e-6


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_exact_em_with_a_constant_column_is_equivariant_to_the_data_scale(scale):
    """The fit of c x is the fit of x scaled by c, so log p(c x) = log p(x) - D log c: the floor is relative."""
    x = constant_column_data()
    fitted, scaled = fit_em(x, latent_dim=2), fit_em(scale * x, latent_dim=2)
    expected = fitted.log_evidence(x).mean() - x.shape[1] * math.log(scale)
    torch.testing.assert_close(scaled.log_evidence(scale * x).mean(), expected, atol=1e-5, rtol=0)


def test_exact_em_on_all_zero_data_is_finite():
    x = torch.zeros(10, 3, dtype=torch.float64)
    assert torch.isfinite(fit_em(x, latent_dim=1).log_evidence(x)).all()


def test_fit_em_leaves_the_global_random_state_alone_and_depends_only_on_its_seed():
    _, x, _ = synthetic_data(num_train=200, seed=2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = fit_em(x, latent_dim=2, max_iter=50, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.randn(10)  # a different global state must not change the fit
    second = fit_em(x, latent_dim=2, max_iter=50, seed=7)
    other = fit_em(x, latent_dim=2, max_iter=50, seed=8)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not torch.equal(first.generative.weight, other.generative.weight)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-3), (torch.float64, 1e-10)])
def test_exact_steps_keep_the_dtype_and_stay_finite_on_a_constant_column(dtype, atol):
    model = random_model().to(dtype)
    x = torch.randn(20, 4, dtype=dtype)
    x[:, 3] = 0.0
    model.m_step(x)
    model.e_step()
    for name, value in model.state_dict().items():
        assert value.dtype == dtype and torch.isfinite(value).all(), name
    assert model.p_z_given_x(x).loc.dtype == dtype
    torch.testing.assert_close(model.expected_elbo(x), model.log_evidence(x), atol=atol, rtol=0)


def test_exact_methods_make_their_tensors_on_the_models_device():
    """On the meta device a tensor made without device= lands on the CPU, and mixing the two raises."""
    model = FactorAnalysis(FAConfig(4, 2)).to("meta")
    x = torch.empty(8, 4, device="meta")
    model.m_step(x)
    model.e_step()
    outputs = (*model.posterior_parameters(), model.p_z_given_x(x).loc, model.log_evidence(x))
    assert all(value.is_meta for value in outputs)


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
