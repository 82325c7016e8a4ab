"""The worked examples in examples/, loaded by path as a user's model files are: each recovers what it simulated,
its bounds are ordered as the mathematics says, and it keeps the model contract."""
import importlib.util
import json
import math
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch
from sklearn.decomposition import PCA

from aevb.testing import check_model

EXAMPLES = Path(__file__).parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"aevb_examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks the module up while it builds Config
    spec.loader.exec_module(module)
    return module


poisson_lvm, ppca, mixture_ppca = load("poisson_lvm"), load("ppca"), load("mixture_ppca")
latent_regression = load("latent_regression")
MODELS = [poisson_lvm.PoissonLVM, ppca.PPCA, mixture_ppca.MixturePPCA]
MODULES = {poisson_lvm.PoissonLVM: poisson_lvm, ppca.PPCA: ppca, mixture_ppca.MixturePPCA: mixture_ppca}


def assert_not_above(lower: torch.Tensor, upper: torch.Tensor, what: str) -> None:
    """mean(lower) <= mean(upper), per-example estimates (B,), within 4 standard errors of their paired difference."""
    gap = upper - lower
    slack = 4 * gap.std().item() / math.sqrt(len(gap)) + 1e-4
    assert gap.mean().item() >= -slack, f"{what}: mean gap {gap.mean().item():.4f} < -{slack:.4f}"


# The CLI's conventions -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_class", MODELS, ids=lambda c: c.__name__)
def test_config_has_data_dim_for_the_fit_to_fill_and_every_field_has_a_default(model_class):
    config_fields = {f.name: f for f in fields(model_class.Config)}
    assert "data_dim" in config_fields
    assert all(f.default is not MISSING for f in config_fields.values())
    model_class(model_class.Config())


@pytest.mark.parametrize("model_class", MODELS, ids=lambda c: c.__name__)
def test_each_example_keeps_the_model_contract(model_class):
    x = MODULES[model_class].simulate(8, model_class.Config(), seed=0)[0]
    torch.manual_seed(0)
    assert set(check_model(model_class(model_class.Config()), (x,)).values()) == {"passed"}  # none skipped


# Poisson latent variable model -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def poisson_fit():
    """(fit, true model with a fitted q, x_test): D = 30, L = 2, N = 2000 train and 1000 test, seed 0."""
    config = poisson_lvm.PoissonLVMConfig(data_dim=30, latent_dim=2, hidden=64)
    x, true_model = poisson_lvm.simulate(3000, config, seed=0)
    torch.manual_seed(0)
    model = poisson_lvm.fit(poisson_lvm.PoissonLVM(config), x[:2000])
    theta = {k: v.clone() for k, v in true_model.generative.state_dict().items()}
    poisson_lvm.fit(true_model, x[:2000], schedule="e-step")
    assert all(torch.equal(v, true_model.generative.state_dict()[k]) for k, v in theta.items()), "E-step moved theta"
    return model, true_model, x[2000:]


def test_poisson_fit_recovers_the_loading_subspace(poisson_fit):
    model, true_model, _ = poisson_fit
    angle = poisson_lvm.largest_principal_angle(true_model.generative.loading, model.generative.loading)
    assert angle < 6.0  # degrees; 3.5 measured


def test_poisson_fit_has_the_true_models_test_iwae_bound(poisson_fit):
    model, true_model, x_test = poisson_fit
    torch.manual_seed(0)
    with torch.no_grad():
        iwae_fit, iwae_true = (m.iwae_bound(x_test, num_samples=500).mean().item() for m in (model, true_model))
    assert abs(iwae_fit - iwae_true) < 0.15  # nats per example; -0.03 measured


@pytest.mark.parametrize("bad", [-1.0, 0.5, float("nan")])
def test_poisson_rejects_data_outside_its_support(bad):
    x = torch.ones(4, 30)
    x[2, 3] = bad
    with pytest.raises(ValueError, match="non-negative integer"):
        poisson_lvm.PoissonLVM(poisson_lvm.PoissonLVMConfig(data_dim=30)).elbo(x)


# Probabilistic PCA ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ppca_fit():
    """(AEVB fit, closed-form MLE, x_train, x_test): D = 10, L = 2, N = 2000 train and 2000 test, seed 0."""
    config = ppca.PPCAConfig(data_dim=10, latent_dim=2)
    x, _ = ppca.simulate(4000, config, seed=0)
    x_train, x_test = x[:2000], x[2000:]
    torch.manual_seed(0)
    return ppca.fit(ppca.PPCA(config), x_train), ppca.closed_form_mle(x_train, 2), x_train, x_test


def test_closed_form_mle_has_scikit_learns_log_likelihood(ppca_fit):
    _, reference, x_train, _ = ppca_fit
    with torch.no_grad():
        ours = reference.log_evidence(x_train).mean().item()
    # scikit-learn's PCA.score is the mean log-likelihood under the same PPCA (its covariance divides by N - 1).
    assert ours == pytest.approx(PCA(n_components=2).fit(x_train.numpy()).score(x_train.numpy()), abs=1e-3)


def test_exact_e_step_makes_every_one_sample_elbo_the_log_evidence(ppca_fit):
    _, reference, _, x_test = ppca_fit
    with torch.no_grad():  # with q = p(z|x), log p(x, z) - log q(z|x) = log p(x) at every z
        torch.testing.assert_close(reference.elbo(x_test, estimator="sgvb").elbo, reference.log_evidence(x_test),
                                   atol=2e-3, rtol=0)


def test_aevb_fit_reaches_the_closed_form_mle(ppca_fit):
    model, reference, _, x_test = ppca_fit
    with torch.no_grad():
        gap = model.log_evidence(x_test).mean().item() - reference.log_evidence(x_test).mean().item()
    assert abs(gap) < 0.01  # nats per example; -0.0053 measured


# Mixture of probabilistic PCAs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture_fit():
    """(fit, true model, x_test, components_test): D = 6, L = 2, K = 3, N = 1500 train and 1000 test, seed 0."""
    config = mixture_ppca.MixturePPCAConfig(data_dim=6, latent_dim=2, num_components=3)
    x, components, true_model = mixture_ppca.simulate(2500, config, seed=0)
    torch.manual_seed(0)
    return mixture_ppca.fit(mixture_ppca.MixturePPCA(config), x[:1500]), true_model, x[1500:], components[1500:]


def test_mixture_fit_recovers_the_clusters_and_the_evidence(mixture_fit):
    model, true_model, x_test, components = mixture_fit
    with torch.no_grad():
        accuracy = mixture_ppca.clustering_accuracy(components, model.cluster_probs(x_test).argmax(1), 3)
        gap = model.log_evidence(x_test).mean().item() - true_model.log_evidence(x_test).mean().item()
    assert accuracy >= 0.99  # 0.999 measured
    assert abs(gap) < 0.1  # nats per example; -0.028 measured


@pytest.mark.parametrize("which", ["fit", "true model, untrained q"])
def test_mixture_bounds_are_ordered_and_approach_the_exact_evidence(mixture_fit, which):
    model = mixture_fit[0] if which == "fit" else mixture_fit[1]
    x = mixture_fit[2][:500]
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x).elbo for _ in range(20)]).mean(0)  # (B,), each an estimate of ELBO(x)
        expected_log_w = model.log_importance_weights(x, num_samples=200).mean(0)  # of E log w_1 = IWAE(1)
        stratified_1 = torch.stack([model.stratified_iwae_bound(x, num_samples=1) for _ in range(50)]).mean(0)
        iwae = {s: model.iwae_bound(x, num_samples=s) for s in (10, 1000)}
        stratified = {s: model.stratified_iwae_bound(x, num_samples=s) for s in (10, 1000)}
        exact = model.log_evidence(x)
    assert_not_above(elbo, expected_log_w, "ELBO <= IWAE(1)")
    assert_not_above(expected_log_w, elbo, "IWAE(1) <= ELBO")
    chains = {"IWAE": (expected_log_w, iwae[10], iwae[1000], exact),
              "stratified": (elbo, stratified_1, stratified[10], stratified[1000], exact)}
    for name, chain in chains.items():
        for lower, upper in zip(chain[:-1], chain[1:]):
            assert_not_above(lower, upper, f"{name} bounds in order")
    if which == "fit":  # a good q: both bounds reach log p(x) by S = 1000
        assert (exact - iwae[1000]).mean() < 0.005 and (exact - stratified[1000]).mean() < 0.005
    else:  # a poor q(k|x): summing k out is far tighter than sampling it
        assert stratified_1.mean() > elbo.mean() + 100


@pytest.mark.parametrize("name, cls, flags", [
    ("poisson_lvm", "PoissonLVM", ["--latent-dim", "2", "--hidden", "16"]),
    ("ppca", "PPCA", ["--latent-dim", "2"]),
    ("mixture_ppca", "MixturePPCA", ["--latent-dim", "2", "--num-components", "3"]),
])
def test_each_example_runs_from_the_command_line_from_a_copy_outside_the_repository(name, cls, flags, tmp_path, capsys):
    """``aevb fit --model FILE.py:Class --dataset data.npy``, then ``aevb eval`` and ``aevb sample`` on the run."""
    import numpy as np

    from aevb.cli import main

    module = load(name)
    (tmp_path / f"{name}.py").write_text((EXAMPLES / f"{name}.py").read_text())
    x = module.simulate(240, getattr(module, cls).Config(data_dim=6), seed=0)[0]
    np.save(tmp_path / "data.npy", x.numpy())
    run = tmp_path / "run"
    assert main(["fit", "--model", f"{tmp_path / name}.py:{cls}", "--dataset", str(tmp_path / "data.npy"), *flags,
                 "--schedule", "alternate:5,5", "--epochs", "2", "--iwae", "5", "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == f"{tmp_path / name}.py:{cls}" and math.isfinite(summary["iwae_log_likelihood"])
    assert main(["eval", str(run), "--iwae", "5"]) == 0
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (4, 6)


# Latent-variable regression: a context c that is not a class label --------------------------------------------
def test_latent_regression_keeps_the_contract_and_recovers_its_coefficients_and_evidence():
    x, c, true_model = latent_regression.simulate(4000, seed=0)
    torch.manual_seed(0)
    model = latent_regression.LatentRegression()
    assert set(check_model(model, (x[:8], c[:8])).values()) == {"passed"}
    latent_regression.fit(model, x[:2000], c[:2000])
    with torch.no_grad():
        fitted, true = model.log_evidence(x[2000:], c[2000:]), true_model.log_evidence(x[2000:], c[2000:])
        elbo = torch.stack([model.elbo(x[2000:], c[2000:]).elbo for _ in range(20)]).mean(0)
        coefficients = model.generative.coefficients - true_model.generative.coefficients
    assert abs(fitted.mean() - true.mean()) < 0.05 and coefficients.abs().max() < 0.2
    assert_not_above(elbo, fitted, "ELBO <= exact log p(x | c)")


def test_latent_regression_runs_from_the_command_line_with_its_covariates(tmp_path, capsys):
    """Its hooks read x, c, x_test, c_test from the --dataset .npz; aevb sample cannot give c and says so."""
    import numpy as np

    from aevb.cli import main

    (tmp_path / "latent_regression.py").write_text((EXAMPLES / "latent_regression.py").read_text())
    x, c, _ = latent_regression.simulate(300, seed=0)
    np.savez(tmp_path / "data.npz", x=x[:240].numpy(), c=c[:240].numpy(), x_test=x[240:].numpy(),
             c_test=c[240:].numpy())
    run = tmp_path / "run"
    assert main(["fit", "--model", f"{tmp_path}/latent_regression.py:LatentRegression", "--dataset",
                 str(tmp_path / "data.npz"), "--epochs", "2", "--iwae", "5", "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evidence"] == "log p(x | c)" and summary["iwae_log_likelihood"] <= summary["test_log_evidence"] + 1
    assert (run / "latentregression_samples.png").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--iwae", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["test_log_evidence"] == summary["test_log_evidence"]
    assert main(["sample", str(run), "--out", str(tmp_path / "s.npz")]) == 2
    assert "LatentRegression.sample needs a context" in capsys.readouterr().err
    assert main(["fit", "--model", f"{tmp_path}/latent_regression.py:LatentRegression", "--dataset",
                 str(tmp_path / "data.npz"), "--covariate-dim", "3", "--out", str(tmp_path / "other")]) == 2
    assert "expected (N, D) and (N, 3), --covariate-dim 3" in capsys.readouterr().err


def test_a_model_built_in_double_precision_is_fitted_and_evaluated_on_float64_data(tmp_path, capsys):
    """The data are read as float32 and given to a float64 model in its dtype (they were refused by the contract)."""
    import numpy as np

    from aevb import fitting
    from aevb.cli import main

    (tmp_path / "ppca.py").write_text((EXAMPLES / "ppca.py").read_text())
    (tmp_path / "ppca64.py").write_text("from ppca import PPCA\n\n\nclass PPCA64(PPCA):\n"
                                         "    def __init__(self, config=PPCA.Config()):\n"
                                         "        super().__init__(config)\n        self.double()\n")
    np.save(tmp_path / "data.npy", ppca.simulate(240, ppca.PPCAConfig(data_dim=6), seed=0)[0].numpy())
    run = tmp_path / "run"
    assert main(["fit", "--model", f"{tmp_path}/ppca64.py:PPCA64", "--dataset", str(tmp_path / "data.npy"),
                 "--epochs", "2", "--iwae", "5", "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iwae_log_likelihood"] <= summary["test_log_evidence"] + 0.5
    loaded, data = fitting.run_and_data(run)
    assert data.test[0].dtype == torch.float64 and loaded.model.generative.weight.dtype == torch.float64
    with torch.no_grad():
        assert loaded.model.log_evidence(*data.test).mean().item() == pytest.approx(summary["test_log_evidence"])
    capsys.readouterr()
    assert main(["eval", str(run), "--iwae", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["test_elbo"] == summary["test_elbo"]
    assert main(["sample", str(run), "--n", "3", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").dtype == np.float64

    (tmp_path / "shards").mkdir()  # rows left on disk are cast as they are read
    for k, rows in enumerate(np.array_split(np.load(tmp_path / "data.npy"), 2)):
        np.save(tmp_path / "shards" / f"{k}.npy", rows)
    assert main(["fit", "--model", f"{tmp_path}/ppca64.py:PPCA64", "--dataset", str(tmp_path / "shards"),
                 "--epochs", "1", "--iwae", "0", "--out", str(tmp_path / "on-disk"), "--no-progress"]) == 0
    on_disk = fitting.run_and_data(tmp_path / "on-disk")[1]
    assert type(on_disk.train[0]).__name__ == "DiskRows" and on_disk.train[0][:3].dtype == torch.float64
