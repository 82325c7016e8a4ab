"""aevb.diagnostics (``aevb diagnose``, ``aevb eval --refine``) against the closed forms of factor analysis.

For FA every quantity is exact: log p(x) = log N(x; 0, W W^T + Phi), and for any Gaussian q,
ELBO(x; q) = log p(x) - KL(q || p(z|x)) in closed form. So q* must reach the exact posterior with a full
covariance (approximation gap 0, amortization gap = KL(q_phi || p(z|x))), and the mean-field optimum (the exact
mean, precisions diag(Sigma*^-1), which ``FactorAnalysis.e_step`` sets) with a diagonal one.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from torch.distributions import (Beta, ExpTransform, Independent, LogNormal, MultivariateNormal, Normal, OneHotCategorical,
                                 RelaxedOneHotCategorical, StudentT, TransformedDistribution, Uniform, kl_divergence)

from aevb.arguments import LocalEStep
from aevb.cli import main
from aevb.diagnostics import (NoLocalParameters, active_units, collapse, diagnose, free_parameters,
                              kl_per_dimension, local_e_step, mutual_information, per_example)
from aevb.model import LatentVariableModel
from aevb.evaluation import evaluate
from aevb.models.fa import FactorAnalysis, FAConfig
from aevb.models.gmvae import GMVAE, GMVAEConfig
from aevb.models.vrnn import VRNN, VRNNConfig

SETTINGS = LocalEStep(steps=300, samples=50, lr=0.05, eval_samples=2000)


def fa_model(posterior: str, seed: int = 0) -> tuple[FactorAnalysis, torch.Tensor]:
    """A float64 FA model with q_phi a few nats from its optimum (the exact E-step, then V perturbed), and data."""
    torch.manual_seed(seed)
    model = FactorAnalysis(FAConfig(5, 2, posterior)).double()
    with torch.no_grad():
        for p in model.generative.parameters():
            p.copy_(torch.randn_like(p))
        model.e_step()
        model.inference.weight.add_(0.1 * torch.randn_like(model.inference.weight))
        model.inference.raw_scale.add_(0.2)
    return model, model.sample(60)


def closed_form_elbo(model: FactorAnalysis, x: torch.Tensor, q) -> torch.Tensor:
    """ELBO(x; q) = log p(x) - KL(q || p(z|x)), exact; shape (B,)."""
    return model.log_evidence(x) - kl_divergence(q, model.p_z_given_x(x))


@pytest.mark.parametrize("posterior", ["full", "diagonal"])
def test_local_e_steps_reach_the_best_member_of_the_family_and_never_lower_the_bound(posterior):
    model, x = fa_model(posterior)
    problem = model.e_step_problem(x)
    q_star, curve, kept = local_e_step(problem, SETTINGS)
    optimum = copy.deepcopy(model)
    optimum.e_step()  # the exact posterior, or the mean-field optimum
    with torch.no_grad():
        before = closed_form_elbo(model, x, problem.q["z"])
        after = closed_form_elbo(model, x, q_star["z"])
        best = closed_form_elbo(model, x, optimum.inference(x))
    assert (best - before > 0.05).all() and (best - before).mean() > 2  # q_phi starts away from the optimum
    assert (after >= before).all()  # refinement never lowers an example's bound
    assert (best - after).abs().max() < 5e-3  # and converges to the exact optimum, example by example
    assert curve.shape == (SETTINGS.steps,) and curve[-10:].mean() > curve[0]
    assert not kept.any()  # every example's q* is its last iterate


def test_local_e_steps_started_at_the_optimum_keep_it():
    """Noisy steps from the exact posterior wander off it (Adam moves each parameter by about its learning rate,
    whatever the gradient's size; 0.03 to 0.07 nats of KL on average at these settings). Each example then keeps
    q_phi wherever its ELBO estimate is the higher, so q* stays within a few thousandths of a nat of the optimum."""
    for seed in range(3):
        model, x = fa_model("full", seed)
        model.e_step()  # q_phi is the exact posterior
        problem = model.e_step_problem(x)
        torch.manual_seed(seed)
        q_star, _, _ = local_e_step(problem, LocalEStep(steps=50, samples=4, lr=0.05, eval_samples=100))
        with torch.no_grad():
            kl = model.log_evidence(x) - closed_form_elbo(model, x, q_star["z"])  # KL(q* || p(z|x))
        assert kl.mean() < 0.005 and kl.max() < 0.1


def test_an_example_whose_elbo_is_not_finite_keeps_q_phi_and_leaves_the_curve_to_the_others():
    """Its local steps left the prior's support, say: the curve is the mean over the examples where it is finite."""
    model, x = fa_model("diagonal")
    problem = model.e_step_problem(x)
    seen = []

    def first_lost(q, num_samples):
        elbo = problem.elbo(q, num_samples).index_fill(0, torch.tensor([0]), -math.inf)
        seen.append(elbo.detach())
        return elbo

    torch.manual_seed(0)
    _, curve, kept = local_e_step(problem._replace(elbo=first_lost), LocalEStep(steps=20, samples=4, lr=0.05,
                                                                                eval_samples=20))
    torch.testing.assert_close(curve, torch.stack([elbo[1:].mean() for elbo in seen[:20]]))
    assert kept[0]  # its -inf estimate does not beat -inf


def test_every_factor_of_an_e_step_problem_has_the_examples_first():
    """A problem whose factor lists its examples last (batch (L,), 60 examples a dimension) is one line, not a
    silent mix of examples' parameters."""
    model, x = fa_model("diagonal")
    problem = model.e_step_problem(x)

    def transposed(q):
        return Independent(Normal(q.base_dist.loc.T, q.base_dist.scale.T), 1)
    examples_last = problem._replace(q={"z": transposed(problem.q["z"])},
                                     elbo=lambda q, num_samples: problem.elbo({"z": transposed(q["z"])}, num_samples))
    with pytest.raises(ValueError, match=r"q\['z'\] has batch shape \(2,\); every factor's must have the examples "
                                         r"first, \(B, \.\.\.\) with B = 60"):
        local_e_step(examples_last, LocalEStep(steps=1))


@pytest.mark.parametrize("posterior", ["full", "diagonal"])
def test_the_gaps_equal_their_closed_forms(posterior):
    model, x = fa_model(posterior)
    torch.manual_seed(0)
    result = diagnose(model, (x,), SETTINGS)
    optimum = copy.deepcopy(model)
    optimum.e_step()
    with torch.no_grad():
        log_px = model.log_evidence(x)
        amortization = kl_divergence(model.inference(x), model.p_z_given_x(x)) - \
            kl_divergence(optimum.inference(x), model.p_z_given_x(x))
        approximation = log_px - closed_form_elbo(model, x, optimum.inference(x))
    assert result["log_evidence"] == "exact"
    assert result["log_px"] == pytest.approx(log_px.mean().item(), abs=1e-9)
    # The ELBOs are 2000-draw estimates for each of 60 examples (Monte Carlo error of their difference about 0.015
    # nats in the mean, over seeds), and q* is within 5e-3 of the optimum (the test above): 0.05 nats.
    assert result["amortization_gap"] == pytest.approx(amortization.mean().item(), abs=0.05)
    assert result["approximation_gap"] == pytest.approx(approximation.mean().item(), abs=0.05)
    if posterior == "full":
        assert approximation.abs().max() < 1e-9  # the family holds the exact posterior
    else:
        assert approximation.min() > 0.01  # the mean-field family does not
    assert result["total_gap"] == pytest.approx(result["amortization_gap"] + result["approximation_gap"], abs=1e-9)
    assert result["active_units"] == 2
    assert len(result["kl_per_dimension"]) == 2 if posterior == "diagonal" else "kl_per_dimension" not in result


def test_free_parameters_rebuild_the_same_distribution():
    torch.manual_seed(0)
    a = torch.randn(4, 3, 3)
    cases = [
        Independent(Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.1), 1),
        MultivariateNormal(torch.randn(4, 3), scale_tril=a.tril(-1) + torch.diag_embed(a.diagonal(dim1=-2, dim2=-1).exp())),
        OneHotCategorical(logits=torch.randn(4, 5)),
        Independent(LogNormal(torch.randn(4, 3), torch.rand(4, 3) + 0.1), 1),  # parameters on its base Normal
        Beta(torch.rand(4) + 0.5, torch.rand(4) + 0.5),  # parameters on its Dirichlet
    ]
    for q in cases:
        free, build = free_parameters(q)
        rebuilt = build(free)
        assert type(rebuilt) is type(q) and all(u.is_leaf and u.requires_grad for u in free.values())
        value = q.sample((7,))
        torch.testing.assert_close(rebuilt.log_prob(value), q.log_prob(value))
    # a constant of the family (a Student t's fixed degrees of freedom, broadcast) is held; one that depends on a
    # trainable parameter is an example's own, even when it is the same for every example
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    free, build = free_parameters(Independent(StudentT(4.0, loc, scale), 1))
    assert set(free) == {"loc", "scale"} and torch.equal(build(free).base_dist.df, torch.full((4, 3), 4.0))
    learned = torch.tensor(4.0, requires_grad=True)
    assert set(free_parameters(StudentT(learned, loc, scale))[0]) == {"df", "loc", "scale"}
    with pytest.raises(NoLocalParameters, match="every parameter of StudentT .* is a constant of its family"):
        free_parameters(StudentT(4.0, torch.tensor(0.0).expand(4, 3), torch.tensor(1.0).expand(4, 3)))
    with pytest.raises(NoLocalParameters, match="the constraints of Uniform's low and high depend on its other"):
        free_parameters(Uniform(torch.zeros(4, 3), torch.ones(4, 3)))  # low < high: neither could pass the other
    full = MultivariateNormal(torch.randn(4, 3), scale_tril=cases[1].scale_tril)
    full.covariance_matrix  # computed, and kept on it
    assert set(free_parameters(full)[0]) == {"loc", "scale_tril"}
    with pytest.raises(NoLocalParameters, match="TransformedDistribution has no parameters"):  # arg_constraints: none
        free_parameters(TransformedDistribution(Normal(torch.zeros(3), 1.0), [ExpTransform()]))
    with pytest.raises(NoLocalParameters, match=r"RelaxedOneHotCategorical is not built from its parameters \(logits"):
        free_parameters(RelaxedOneHotCategorical(torch.tensor(0.5), logits=torch.randn(4, 5)))  # and a temperature


def test_gmvae_local_e_steps_tighten_its_marginal_bound():
    torch.manual_seed(0)
    model = GMVAE(GMVAEConfig(data_dim=12, latent_dim=3, hidden=(16, 16)))
    x = torch.rand(40, 12).round()
    columns, curve = per_example(model, (x,), LocalEStep(steps=60, eval_samples=200), iwae_samples=200)
    assert (columns["elbo_optimal"] > columns["elbo_amortized"]).float().mean() > 0.9
    assert columns["elbo_optimal"].mean() - columns["elbo_amortized"].mean() > 0.5
    assert (columns["iwae"] > columns["elbo_optimal"] - 0.05).all()  # the bound with q* as proposal, K = 200
    assert curve[-5:].mean() > curve[0]


def test_a_model_without_an_e_step_problem_says_what_is_not_covered():
    torch.manual_seed(0)
    model = VRNN(VRNNConfig(data_dim=5, seq_len=4))
    result = diagnose(model, (torch.rand(20, 4, 5).round(),), LocalEStep(steps=5, eval_samples=5), iwae_samples=20)
    assert result["local_e_step"].startswith("not covered: vrnn defines no e_step_problem")
    assert "amortization_gap" not in result and "e_step_curve" not in result
    assert result["total_gap"] == pytest.approx(result["log_px"] - result["elbo_amortized"])


def test_diagnose_needs_two_examples_and_evaluation_one():
    model = FactorAnalysis(FAConfig(data_dim=3, latent_dim=1))
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="diagnose needs at least 2 examples .* got 1"):
        diagnose(model, (x[:1],), LocalEStep(steps=2, eval_samples=2), iwae_samples=2)
    with pytest.raises(ValueError, match="no examples to evaluate on"):
        evaluate(model, (x[:0],), num_samples=2)


def test_active_units_and_mutual_information():
    codes = torch.cat([torch.randn(500, 2), 0.05 * torch.randn(500, 3)], 1)  # variances 1, 1 and 0.0025
    assert active_units(codes) == 2
    torch.manual_seed(0)
    shared = Independent(Normal(torch.zeros(300, 2), torch.ones(300, 2)), 1)  # q(z|x) the same for every x
    estimate, se = mutual_information(shared)
    assert abs(estimate) < 3 * se < 0.05  # 0, within the estimate's noise
    apart = Independent(Normal(100 * torch.randn(300, 4), torch.ones(300, 4)), 1)  # each x its own region of z
    assert mutual_information(apart)[0] == pytest.approx(math.log(300), abs=0.01)


def test_a_q_whose_support_depends_on_x_has_its_mutual_information():
    """q(z|x) = U(x, x + 1), disjoint for these x: q(z_n | x_m) = 0 for m != n, where torch's check of the
    argument would raise, so I = log N exactly."""

    @dataclasses.dataclass
    class Config:
        data_dim: int = 1

    class UniformCodes(LatentVariableModel):
        def __init__(self, config: Config) -> None:
            super().__init__(config)
            self.generative, self.inference = torch.nn.Linear(2, 1), torch.nn.Linear(1, 1)

        def factors(self, x):
            low = (x + 0 * self.inference(x)).expand(-1, 2)
            p_x_given_z = lambda z: Independent(Normal(self.generative(z), 1.0), 1)  # noqa: E731
            return Independent(Uniform(low, low + 1), 1), Independent(Normal(torch.zeros(2), 100.0), 1), p_x_given_z

        def sample(self, num_samples):
            return torch.zeros(num_samples, 1)

    UniformCodes.Config = Config
    result = collapse(UniformCodes(Config()), (2 * torch.arange(50.0).view(50, 1),))
    assert (result["mutual_information"], result["mutual_information_se"]) == (pytest.approx(math.log(50)), 0.0)


def test_kl_per_dimension_is_over_every_dimension_of_a_latent_with_a_shape():
    q = Independent(Normal(torch.randn(7, 2, 3), torch.rand(7, 2, 3) + 0.5), 2)
    p = Independent(Normal(torch.zeros(2, 3), torch.ones(2, 3)), 2)
    per_dimension = kl_per_dimension(q, p)
    assert len(per_dimension) == 6
    assert sum(per_dimension) == pytest.approx(kl_divergence(q, p).mean().item(), rel=1e-5)


def test_diagnose_and_refine_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "fa"
    assert main(["fit", "fa", "--posterior", "diagonal", "--steps", "300", "--iwae", "0", "--out", run,
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["diagnose", run, "--examples", "50", "--steps", "40", "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((run / "diagnostics.json").read_text())
    assert printed["examples"] == saved["examples"] == 50 and saved["local_e_step"]["steps"] == 40
    assert (run / "diagnostics.png").stat().st_size > 10_000
    assert main(["diagnose", run, "--examples", "50", "--steps", "40", "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["amortization_gap"] == printed["amortization_gap"]  # seeded
    assert main(["eval", run, "--refine", "30", "--iwae", "10", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["refine_steps"] == 30 and summary["test_elbo_refined"] > summary["test_elbo_amortized"]
    assert summary["refinement_gain"] == pytest.approx(summary["test_elbo_refined"] - summary["test_elbo_amortized"],
                                                      abs=1e-5)  # float32 means
    assert 0 < summary["refinement_gain_se"] < summary["refinement_gain"]
    # the IWAE bound with q* as proposal, against factor analysis's exact log p(x)
    assert summary["iwae_log_likelihood_refined"] == pytest.approx(summary["test_log_evidence"], abs=0.01)
    early = tmp_path / "fa-early"  # a barely trained encoder: only the refined proposal comes near log p(x)
    assert main(["fit", "fa", "--posterior", "diagonal", "--steps", "10", "--iwae", "0", "--out", early,
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", early, "--refine", "30", "--iwae", "10", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_log_evidence"] - summary["iwae_log_likelihood"] > 0.1
    assert summary["iwae_log_likelihood_refined"] == pytest.approx(summary["test_log_evidence"], abs=0.05)


def test_refining_a_model_without_local_e_steps_is_refused_before_the_evaluation(tmp_path, capsys, monkeypatch):
    from aevb import diagnostics, evaluation

    run = tmp_path / "vrnn"
    assert main(["fit", "vrnn", "--hidden", "8", "--latent-dim", "2", "--steps", "3", "--iwae", "0", "--out", run,
                 "--no-progress"]) == 0
    capsys.readouterr()
    for module, name in ((evaluation, "evaluate"), (diagnostics, "per_example")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: pytest.fail("evaluated before the refusal"))
    assert main(["eval", run, "--refine", "5"]) == 2
    assert "vrnn defines no e_step_problem (see aevb.diagnostics), so it has no local E-steps" in capsys.readouterr().err
