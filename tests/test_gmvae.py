"""Gaussian-mixture VAE: the exact marginal estimator against a brute-force loop, the Gumbel estimators in the
small-temperature limit, the temperature schedule, Hungarian clustering scores, and the CLI's errors."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.distributions import OneHotCategorical, kl_divergence

from aevb import clustering, cli, fitting
from aevb.experiments.gmvae import cluster_metrics
from aevb.models import gmvae
from aevb.models.gmvae import GMVAE, GMVAEConfig, KLWeightSchedule, TemperatureSchedule
from aevb.trainer import Trainer

C, D = 4, 12


def small_model(variant="gmm", seed=0, **config) -> GMVAE:
    """A small GMVAE in float64 with a random, non-degenerate q(y|x)."""
    torch.manual_seed(seed)
    model = GMVAE(GMVAEConfig(D, C, latent_dim=3, hidden=(16, 16), variant=variant, **config)).double()
    with torch.no_grad():
        model.inference.logits_y[-1].bias.copy_(torch.randn(C))
    return model


def binary_data(n=6, seed=1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, D), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["gmm", "m2"])
def test_vectorized_marginal_estimator_equals_a_brute_force_loop_over_y(variant):
    model, x = small_model(variant), binary_data()
    torch.manual_seed(5)
    vectorized = model.elbo(x, estimator="marginal")
    torch.manual_seed(5)
    eps = torch.randn(C, len(x), model.config.latent_dim, dtype=x.dtype)  # the noise rsample drew, (C, B, L)

    # The loop: the tutorial's way, q(z|x,y)'s first layer on the concatenation [x, y], one y at a time.
    inf, gen = model.inference, model.generative
    first_layer = torch.cat([inf.z_from_x.weight, inf.z_from_y.weight], 1)  # (H, D + C)
    q_y = OneHotCategorical(logits=inf.logits_y(x))
    p_y = OneHotCategorical(logits=torch.zeros(C, dtype=x.dtype))
    total = -kl_divergence(q_y, p_y)
    for c in range(C):
        y = F.one_hot(torch.full((len(x),), c), C).to(x)  # (B, C)
        q_z = inf.z_rest(F.relu(torch.cat([x, y], 1) @ first_layer.T + inf.z_from_x.bias))
        z = q_z.mean + q_z.stddev * eps[c]
        log_likelihood = gen.p_x_given_z(z, y).log_prob(x)
        total = total + q_y.probs[:, c] * (log_likelihood - kl_divergence(q_z, gen.p_z_given_y(y)))
    torch.testing.assert_close(vectorized.elbo, total)
    torch.testing.assert_close(vectorized.elbo, vectorized.log_likelihood - vectorized.kl)


def test_marginal_bound_includes_log_c_and_stays_below_the_iwae_bound():
    model, x = small_model(), binary_data(4)
    with torch.no_grad():  # q(y|x) uniform: KL(q(y|x) || p(y)) = 0, so kl is the z part alone
        model.inference.logits_y[-1].weight.zero_()
        model.inference.logits_y[-1].bias.zero_()
        assert kl_divergence(model.inference.q_y_given_x(x), model.p_y()).abs().max() < 1e-12
        model.inference.logits_y[-1].bias.copy_(torch.tensor([5.0, 0, 0, 0]))  # nearly certain: KL ~ log C
        q_y = model.inference.q_y_given_x(x)
        torch.testing.assert_close(kl_divergence(q_y, model.p_y()), math.log(C) - q_y.entropy())
        torch.testing.assert_close(model.kl_y(q_y), kl_divergence(q_y, model.p_y()))  # the sync-free form
        repeated = x.repeat(400, 1)
        elbo = model.elbo(repeated).elbo.reshape(400, -1).mean(0)
        iwae = model.iwae_bound(repeated, num_samples=50).reshape(400, -1).mean(0)
    assert (elbo < iwae).all()


@pytest.mark.parametrize("variant", ["gmm", "m2"])
def test_iwae_bound_sums_y_out_exactly(variant):
    """log sum_y p(y) (1/K) sum_k w_k(y) with the K weights of each y, checked against a loop over y with the same
    draws; at equal K it is tighter than sampling y from q(y|x), with less spread."""
    model, x = small_model(variant), binary_data(5)
    with torch.no_grad():
        torch.manual_seed(3)
        bound = model.iwae_bound(x, num_samples=7, chunk_size=7 * C)  # the 7 draws of each y in one chunk
        torch.manual_seed(3)
        weights = model.log_importance_weights_given_y(x, 7)  # (K, C, B): the same draws
        loop = torch.logsumexp(torch.stack([torch.logsumexp(weights[:, c], 0) - math.log(7) - math.log(C)
                                            for c in range(C)]), 0)
        torch.testing.assert_close(bound, loop)
        repeats = 300
        exact_y = torch.stack([model.iwae_bound(x, num_samples=5) for _ in range(repeats)])  # (R, B)
        sampled_y = torch.stack([super(GMVAE, model).iwae_bound(x, num_samples=5) for _ in range(repeats)])
    assert (exact_y.mean(0) > sampled_y.mean(0)).all()  # tighter
    assert (exact_y.std(0) < sampled_y.std(0)).all()  # less variance at equal K


@pytest.mark.parametrize("estimator", ["gumbel-analytic", "gumbel-relaxed"])
def test_at_small_temperature_the_gumbel_estimators_approach_the_marginal_one(estimator):
    model, x = small_model(temperature=0.02), binary_data(3)
    repeated = x.repeat(4000, 1)
    with torch.no_grad():
        marginal, gumbel = model.elbo(repeated), model.elbo(repeated, estimator=estimator)

    def mean_and_error(t):  # per-example mean over the repeats and its standard error
        t = t.reshape(4000, -1)
        return t.mean(0), t.std(0) / 4000**0.5

    (m_ll, m_se), (g_ll, g_se) = mean_and_error(marginal.log_likelihood), mean_and_error(gumbel.log_likelihood)
    assert ((m_ll - g_ll).abs() < 4 * (m_se**2 + g_se**2).sqrt() + 0.05).all()
    (m, m_se), (g, g_se) = mean_and_error(marginal.elbo), mean_and_error(gumbel.elbo)
    if estimator == "gumbel-analytic":  # the whole bound converges
        assert ((m - g).abs() < 4 * (m_se**2 + g_se**2).sqrt() + 0.05).all()
    else:  # the Concrete KL does not shrink to the categorical one (data processing): a looser bound
        assert (g < m).all()


def test_concrete_kl_does_not_depend_on_temperature_and_bounds_the_categorical_kl():
    model, x = small_model(), binary_data(3)
    repeated = x.repeat(4000, 1)
    kls, variances = [], []
    with torch.no_grad():
        for temperature in (1.0, 0.1):
            model.temperature = temperature
            relaxed, analytic = (model.elbo(repeated, estimator=e) for e in ("gumbel-relaxed", "gumbel-analytic"))
            draws = (relaxed.kl - analytic.kl).reshape(4000, -1)  # relaxed KL_y - KL_y per draw (z parts agree)
            kls.append(draws.mean(0))
            variances.append(draws.var(0) / 4000)
    assert (kls[0] > 0).all() and (kls[1] > 0).all()
    assert ((kls[0] - kls[1]).abs() < 4 * (variances[0] + variances[1]).sqrt()).all()  # 4 standard errors


def test_straight_through_feeds_one_hot_forward_and_gradients_back_to_q_y(monkeypatch):
    model, x = small_model(straight_through=True), binary_data()
    seen = []
    q_z_given_x_y = model.inference.q_z_given_x_y
    monkeypatch.setattr(model.inference, "q_z_given_x_y", lambda part, y: seen.append(y) or q_z_given_x_y(part, y))
    model.elbo(x, estimator="gumbel-analytic").elbo.sum().backward()
    y = seen[0].detach()
    torch.testing.assert_close(y, F.one_hot(y.argmax(-1), C).to(y))
    assert model.inference.logits_y[0][0].weight.grad.abs().sum() > 0


def test_shapes_of_samples_generations_encodings_and_importance_weights():
    model, x = small_model(), binary_data(5)
    assert model.sample(7).shape == (7, D) and set(model.sample(7).unique().tolist()) <= {0.0, 1.0}
    generations = model.generate(3)
    assert generations.shape == (C, 3, D) and ((generations >= 0) & (generations <= 1)).all()
    assert model.encode(x).shape == (5, 3)
    assert model.log_importance_weights(x, num_samples=9).shape == (9, 5)
    torch.testing.assert_close(model.cluster_probs(x).sum(1), torch.ones(5, dtype=x.dtype))


def test_unknown_estimator_and_too_few_components_are_rejected():
    with pytest.raises(ValueError, match="choose one of marginal"):
        small_model().elbo(binary_data(), estimator="aevb")
    with pytest.raises(ValueError, match="at least 2 components"):
        GMVAEConfig(num_components=1)


def test_temperature_schedule_decays_to_its_floor():
    schedule = TemperatureSchedule(initial=1.0, decay=0.5, minimum=0.2)
    assert [schedule(e) for e in range(4)] == [1.0, 0.5, 0.25, 0.2]
    assert TemperatureSchedule(0.5)(10) == 0.5
    assert TemperatureSchedule(0.05, minimum=0.1)(3) == 0.05  # the floor never lifts tau above its start


def test_temperature_schedule_changes_the_temperature_used_in_training(monkeypatch):
    used = []

    class Recording(gmvae.ExpRelaxedCategorical):
        def __init__(self, temperature, *args, **kwargs):
            used.append(round(float(temperature), 6))
            super().__init__(temperature, *args, **kwargs)

    monkeypatch.setattr(gmvae, "ExpRelaxedCategorical", Recording)
    model, x = small_model(temperature=1.0), binary_data(20).float()
    model = model.float()
    schedule = TemperatureSchedule(1.0, decay=0.5, minimum=0.3)
    Trainer(model, batch_size=10, estimator="gumbel-relaxed", progress=False).fit(
        (x,), epochs=3, callbacks=[schedule.callback(model.tau)])
    per_step = used[::2]  # two Concrete distributions per step: q(y|x) and p(y)
    assert per_step == [1.0, 1.0, 0.5, 0.5, 0.3, 0.3]


def test_kl_weight_schedule_ramps_linearly_to_one():
    assert [KLWeightSchedule(0.0, 4)(e) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [KLWeightSchedule(3.0, 2)(e) for e in range(3)] == [3.0, 2.0, 1.0]  # a start above 1 anneals down
    assert KLWeightSchedule()(0) == 1.0  # no warm-up


@pytest.mark.parametrize("estimator", ["marginal", "gumbel-analytic"])
def test_a_discrete_kl_warmup_changes_the_gradient_but_not_the_elbo(estimator):
    """In training, the objective is ELBO + (1 - w) KL(q(y|x) || p(y)), and a step follows its gradient; the ELBO
    and its terms are the same as at w = 1, and in evaluation there is no objective at all."""
    model, x = small_model(), binary_data()
    terms = {}
    for w in (1.0, 0.25):
        model.discrete_kl_weight.fill_(w)
        torch.manual_seed(3)
        terms[w] = model.elbo(x, estimator=estimator)
    kl_y = model.kl_y(model.inference.q_y_given_x(x))
    for name in ("elbo", "log_likelihood", "kl"):
        torch.testing.assert_close(getattr(terms[0.25], name), getattr(terms[1.0], name))
    torch.testing.assert_close(terms[1.0].objective, terms[1.0].elbo)
    torch.testing.assert_close(terms[0.25].objective, terms[1.0].elbo + 0.75 * kl_y)

    parameters = list(model.inference.logits_y.parameters())
    gradient = torch.autograd.grad(terms[0.25].objective.mean(), parameters)
    trainer = Trainer(model, batch_size=len(x), estimator=estimator, progress=False)
    torch.manual_seed(3)
    before = [p.detach().clone() for p in parameters]
    step_terms = trainer.step((x,), "e")
    torch.testing.assert_close([p.grad for p in parameters], [-g for g in gradient])
    torch.testing.assert_close(step_terms[2], terms[1.0].elbo.mean())  # the recorded ELBO is the ELBO
    assert all(not torch.equal(b, p) for b, p in zip(before, parameters))
    model.eval()
    assert model.elbo(x, estimator=estimator).objective is None


@pytest.mark.parametrize("estimator", ["marginal", "gumbel-analytic"])
def test_a_mutual_information_warmup_keeps_the_balance_term_at_full_weight(estimator):
    """Under the mutual-information warm-up the objective is ELBO + (1 - w) [KL(q(y|x) || p(y)) - KL(q_bar || p(y))],
    q_bar the batch's mean q(y|x): the same ELBO and terms, and at w = 1 the ELBO itself."""
    model, x = small_model(), binary_data()
    q_y = model.inference.q_y_given_x(x)
    q_bar = q_y.probs.mean(0)
    balance = (q_bar * (q_bar.log() + math.log(model.config.num_components))).sum()  # KL(q_bar || uniform)
    assert balance > 0
    terms = {}
    for term, w in (("kl", 1.0), ("mutual-information", 1.0), ("mutual-information", 0.25)):
        model.warmup_term = term
        model.discrete_kl_weight.fill_(w)
        torch.manual_seed(3)
        terms[term, w] = model.elbo(x, estimator=estimator)
    reference = terms["kl", 1.0]
    for name in ("elbo", "log_likelihood", "kl"):
        torch.testing.assert_close(getattr(terms["mutual-information", 0.25], name), getattr(reference, name))
    torch.testing.assert_close(terms["mutual-information", 1.0].objective, reference.elbo)
    torch.testing.assert_close(terms["mutual-information", 0.25].objective,
                               reference.elbo + 0.75 * (model.kl_y(q_y) - balance))


def test_the_mutual_information_warmup_from_the_command_line(tmp_path, capsys):
    """It trains and logs w, and a warm-up term without a warm-up is refused in one line, before any file."""
    out = tmp_path / "run"
    flags = ["--iwae", "0", "--no-progress", "--hidden", "16", "--latent-dim", "2", "--discrete-kl-warmup", "2",
             "--discrete-kl-warmup-term", "mutual-information"]
    assert cli.main(["fit", "gmvae", "--epochs", "2", "--out", str(out), *flags]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["discrete_kl_weight"] for r in rows] == pytest.approx([0.0, 0.5])
    assert json.loads((out / "summary.json").read_text())["cluster_accuracy"] > 0
    capsys.readouterr()
    assert cli.main(["fit", "gmvae", "--epochs", "1", "--out", str(tmp_path / "other"), "--discrete-kl-warmup-term",
                     "mutual-information"]) == 2
    err = capsys.readouterr().err
    assert "add --discrete-kl-warmup EPOCHS" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "other").exists()


def test_the_discrete_kl_weight_of_each_epoch_is_logged(tmp_path):
    """(Its resume, bit for bit, is in tests/test_resume.py.)"""
    out = tmp_path / "run"
    assert cli.main(["fit", "gmvae", "--epochs", "3", "--iwae", "0", "--no-progress", "--out", str(out), "--hidden",
                     "16", "--latent-dim", "2", "--discrete-kl-warmup", "2", "--discrete-kl-start", "0.2"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["discrete_kl_weight"] for r in rows] == pytest.approx([0.2, 0.6, 1.0])


def test_a_new_temperature_does_not_recompile_a_compiled_elbo():
    model, x = small_model(), binary_data()
    model.elbo(x, estimator="gumbel-relaxed")  # eager first, as the Trainer does: it fills torch's KL memo
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lambda x: model.elbo(x, estimator="gumbel-relaxed").elbo, backend="eager")
    for temperature in (0.5, 0.3, 0.2):
        model.temperature = temperature
        compiled(x)
    assert model.temperature == pytest.approx(0.2) and counters["stats"]["unique_graphs"] == 1


def test_hungarian_accuracy_of_a_permuted_labelling_is_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    permutation = rng.permutation(7)[:5]  # 5 labels onto 7 clusters, two never used
    clusters = permutation[labels]
    assert clustering.cluster_accuracy(clusters, labels, 7, 5) == 1.0
    assert clustering.nmi(clusters, labels) == pytest.approx(1.0)
    matched = clustering.match_clusters(clusters, labels, 7, 5)
    assert (matched[permutation] == np.arange(5)).all() and (np.delete(matched, permutation) == -1).all()
    order = clustering.order_by_label(matched)
    assert (order[:5] == permutation[np.argsort(np.arange(5))]).all() and set(order[5:]) == set(range(7)) - set(permutation)


def test_hungarian_accuracy_counts_only_the_best_one_to_one_matching():
    clusters = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([0, 0, 1, 1, 1, 1])  # cluster 0 -> 0 (2 right), cluster 1 -> 1 (3 right)
    assert clustering.cluster_accuracy(clusters, labels, 2, 2) == pytest.approx(5 / 6)
    # Both clusters prefer label 1 by count, but only one may have it.
    assert clustering.cluster_accuracy(np.array([0, 0, 1, 1, 1]), np.array([1, 1, 1, 1, 0]), 2, 2) == pytest.approx(3 / 5)
    np.testing.assert_allclose(clustering.cluster_proportions(clusters, 3), [0.5, 0.5, 0.0])


def test_majority_accuracy_lets_clusters_share_a_label():
    # Both clusters' most frequent label is 1: many-to-one, each counts its own majority (2 + 2 of 5).
    clusters, labels = np.array([0, 0, 1, 1, 1]), np.array([1, 1, 1, 1, 0])
    assert clustering.majority_accuracy(clusters, labels, 2, 2) == pytest.approx(4 / 5)
    assert clustering.cluster_accuracy(clusters, labels, 2, 2) == pytest.approx(3 / 5)
    # Splitting a cluster can only raise it: every example in its own cluster is always right.
    assert clustering.majority_accuracy(np.arange(5), labels, 5, 2) == 1.0


def test_cli_fits_the_digits_and_writes_the_clustering_summary_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["fit", "gmvae", "--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--components", "3",
                     "--estimator", "gumbel-relaxed", "--temperature", "0.8", "--temperature-decay", "0.5",
                     "--out", str(out), "--json", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["temperature"] for r in records] == pytest.approx([0.8, 0.4])  # the schedule reached training
    assert all(0 <= r["cluster_accuracy"] <= 1 and r["test_elbo"] < 0 for r in records)
    for key in ("test_elbo", "cluster_accuracy", "majority_accuracy", "conditional_entropy", "nmi"):
        assert isinstance(summary[key], float), key
    assert summary["cluster_accuracy"] <= summary["majority_accuracy"] <= 1
    assert 0 <= summary["conditional_entropy"] <= math.log(3) + 1e-6
    assert summary["test_elbo_without_log_c"] == pytest.approx(summary["test_elbo"] + math.log(3))
    assert sum(summary["cluster_proportions"]) == pytest.approx(1, abs=1e-3)
    assert {"gmvae_learning_curves.png", "gmvae_cluster_generations.png", "metrics.jsonl", "model.pt"} <= {
        p.name for p in out.iterdir()}
    assert cli.main(["eval", str(out), "--iwae", "5", "--json"]) == 0  # the run's test set rebuilt, same seed
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["test_elbo"] == pytest.approx(summary["test_elbo"], abs=1e-4)


def test_cli_rejects_non_binary_data_on_one_line(tmp_path, capsys):
    path = tmp_path / "grey.npy"
    np.save(path, np.random.default_rng(0).uniform(size=(30, 5)).astype(np.float32))
    assert cli.main(["fit", "gmvae", "--dataset", str(path), "--transform", "none", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "exactly 0 or 1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_reports_a_failed_compile_on_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))  # nothing compiled earlier to reuse
    torch._dynamo.reset()
    with torch._inductor.config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++")), "fx_graph_cache": False}):
        code = cli.main(["fit", "gmvae", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--components", "2",
                         "--compile", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--compile failed" in err and "C++ compiler" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_merge_components_groups_the_components_that_share_examples():
    rng = np.random.default_rng(0)
    true_groups = rng.permutation(np.repeat(np.arange(3), 2))  # six components, two to each of three groups
    examples = rng.integers(0, 3, 300)
    probs = np.full((300, 7), 1e-4)  # a seventh component no example gives weight to: column zeroed below
    for i, g in enumerate(examples):
        pair = np.flatnonzero(true_groups == g)
        probs[i, pair] = rng.dirichlet([1.0, 1.0])  # each example splits its weight within its group's pair
    probs[:, 6] = 0
    probs /= probs.sum(1, keepdims=True)
    groups = clustering.merge_components(probs, 3)
    assert groups[6] == 0 and set(groups[:6]) == {0, 1, 2}
    for g in range(3):  # the partition found is the true one, up to the groups' names
        assert len(set(groups[:6][true_groups == g])) == 1
    merged = clustering.merged_clusters(probs, groups)
    assert clustering.cluster_accuracy(merged, examples, 3, 3) == 1.0
    # With no more components that have weight than groups, each is its own group.
    np.testing.assert_array_equal(clustering.merge_components(probs[:, [0, 1, 6]], 3), [0, 1, 0])


def test_cli_merges_more_components_than_classes_without_the_labels(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["fit", "gmvae", "--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--components", "14",
                     "--out", str(out), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    groups = np.array(summary["merged_groups"])
    assert groups.shape == (14,) and set(groups) <= set(range(10))  # the digits' ten classes
    assert 0 <= summary["merged_accuracy"] <= 1 and records[-1]["merged_accuracy"] == summary["merged_accuracy"]
    run = fitting.load_run(out)
    data = run.data()
    metrics = cluster_metrics(run.model, data)
    shuffled = dataclasses.replace(data, y_test=data.y_test[torch.randperm(len(data.y_test))])
    np.testing.assert_array_equal(cluster_metrics(run.model, shuffled)["merged_groups"], groups)  # labels unused
    clusters = clustering.merged_clusters(run.model.cluster_probs(data.test[0]).detach().numpy(), groups)
    assert metrics["merged_accuracy"] == summary["merged_accuracy"] == clustering.cluster_accuracy(
        clusters, data.y_test.numpy(), 10, 10)
