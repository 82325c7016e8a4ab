"""The variational RNN: its batched ELBO against a step-by-step loop, gradients through z_t, sampling, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.distributions import kl_divergence

from aevb.cli import main
from aevb.elbo import iwae_bound
from aevb import fitting
from aevb.models.vrnn import VRNN, VRNNConfig, diagonal_normal_from
from aevb.trainer import Trainer

B, T, D = 6, 5, 7


def small_model(likelihood: str = "bernoulli", seed: int = 0) -> VRNN:
    torch.manual_seed(seed)
    return VRNN(VRNNConfig(data_dim=D, seq_len=T, latent_dim=2, hidden_dim=16, mlp_dim=24, likelihood=likelihood))


def binary_sequences(n: int = B, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, T, D), 0.3), generator=torch.Generator().manual_seed(seed))


def stepwise(model: VRNN, x: torch.Tensor, use_mean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ELBO as the tutorial computes it, every network called inside the time loop, shape (B,); and the
    z_t it drew (or, with ``use_mean``, q's means, each fed forward), concatenated over t: (B, T * L)."""
    generative, posterior = model.generative, model.inference
    state = generative.transition.initial_state(len(x), x)
    h, elbo, zs = state[-1][0], 0, []
    for t in range(x.shape[1]):
        if t > 0:
            h, state = generative.transition(x[:, t - 1], z, state)
        q_z = diagonal_normal_from(posterior(h, posterior.read_x(x[:, t])))
        z = q_z.mean if use_mean else q_z.rsample()
        zs.append(z)
        elbo = elbo + generative.p_x_given_z(h, z).log_prob(x[:, t]) - kl_divergence(q_z, generative.p_z(h))
    return elbo, torch.cat(zs, 1)


def test_batched_prior_and_decoder_give_the_stepwise_elbo():
    model, x = small_model(), binary_sequences()
    torch.manual_seed(3)
    batched = model.elbo(x)
    torch.manual_seed(3)  # the same noise for every z_t
    torch.testing.assert_close(batched.elbo, stepwise(model, x)[0])
    torch.testing.assert_close(batched.elbo, batched.log_likelihood - batched.kl)
    assert batched.elbo.shape == (B,) and (batched.kl >= 0).all()


def test_one_importance_weight_is_the_sampled_kl_elbo():
    """log w = sum_t log p(x_t|.) + log p(z_t|h_t) - log q(z_t|.) is the SGVB estimate at the same trajectory."""
    model, x = small_model(), binary_sequences()
    torch.manual_seed(4)
    log_w = model.log_importance_weights(x, num_samples=1)
    torch.manual_seed(4)
    torch.testing.assert_close(log_w[0], model.elbo(x, estimator="sgvb").elbo)


def test_importance_weights_are_whole_independent_trajectories():
    """Weight k of sequence b is the sampled-KL ELBO of its own trajectory: that of the k-th copy of the batch."""
    model, x = small_model(), binary_sequences()
    with torch.no_grad():
        torch.manual_seed(5)
        log_w = model.log_importance_weights(x, num_samples=64)  # (K, B)
        torch.manual_seed(5)
        torch.testing.assert_close(log_w, model.elbo(x.repeat(64, 1, 1), estimator="sgvb").elbo.view(64, B))
        bound = iwae_bound(lambda k: model.log_importance_weights(x, num_samples=k), 64, chunk_size=16)
        elbos = torch.stack([model.elbo(x).elbo for _ in range(64)])
    assert log_w.shape == (64, B) and log_w.std(0).min() > 0
    assert bound.shape == (B,)
    assert bound.mean() > elbos.mean()  # the bound rises with K above the ELBO


def test_the_likelihood_term_alone_has_a_gradient_for_q():
    """z_t is drawn with rsample: log p(x_t | h_t, z_t) depends on q's parameters only through z_t."""
    model, x = small_model(), binary_sequences()
    log_likelihood = model.elbo(x).log_likelihood.sum()
    gradients = torch.autograd.grad(log_likelihood, list(model.inference.parameters()))
    assert all(g.abs().sum() > 0 for g in gradients)


def test_a_later_steps_likelihood_reaches_q_at_the_first_step():
    """Through z_1 -> h_2 -> ... -> h_T, the last step's log-likelihood depends on q's output at step 1."""
    model, x = small_model(), binary_sequences()
    q_outputs = []
    hook = model.inference.register_forward_hook(lambda module, inputs, output: q_outputs.append(output))
    h, z, _ = model.trajectory(x)
    hook.remove()
    last = model.generative.p_x_given_z(h[:, -1], z[:, -1]).log_prob(x[:, -1]).sum()
    (gradient,) = torch.autograd.grad(last, q_outputs[0])
    assert len(q_outputs) == T and gradient.abs().sum() > 0


def test_generation_has_the_sequence_shape_and_is_binary_when_sampled():
    model = small_model()
    x, parameters = model.generate(9)
    assert x.shape == parameters.shape == (9, T, D)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert ((parameters >= 0) & (parameters <= 1)).all()
    assert model.sample(3).shape == (3, T, D)
    continuous = small_model("cb").sample(4)
    assert ((continuous >= 0) & (continuous <= 1)).all() and continuous.shape == (4, T, D)


def test_encode_concatenates_the_posterior_means_each_fed_forward():
    model, x = small_model(), binary_sequences()
    codes = model.encode(x)
    assert codes.shape == (B, T * 2)
    torch.testing.assert_close(codes, stepwise(model, x, use_mean=True)[1])


def test_training_raises_the_elbo():
    model, x = small_model(), binary_sequences(n=60)
    torch.manual_seed(6)
    before = model.elbo(x).elbo.mean().item()
    Trainer(model, lr=3e-3, batch_size=20, progress=False).fit((x,), epochs=15)
    torch.manual_seed(6)
    assert model.elbo(x).elbo.mean().item() > before + 1.0


def test_a_gaussian_vrnn_learns_a_real_time_series():
    """Sine waves of random phase (amplitude 3, noise 0.2): the ELBO rises by over 100 nats, above the
    log-likelihood of the best Gaussian without dynamics (each dimension's own mean and scale)."""
    rng = np.random.default_rng(0)
    t, phase = np.arange(T), rng.uniform(0, 2 * np.pi, (60, 1, 1))
    x = torch.tensor(3 * np.sin(0.5 * t[None, :, None] + phase + np.arange(D)) + 0.2 * rng.normal(size=(60, T, D)),
                     dtype=torch.float32)
    model = small_model(likelihood="gaussian")
    torch.manual_seed(6)
    before = model.elbo(x).elbo.mean().item()
    Trainer(model, lr=1e-2, batch_size=20, progress=False).fit((x,), epochs=40)
    torch.manual_seed(6)
    after = model.elbo(x).elbo.mean().item()
    without_dynamics = torch.distributions.Normal(x.mean((0, 1)), x.std((0, 1))).log_prob(x).sum((1, 2)).mean()
    assert after > before + 100 and after > without_dynamics.item()


@pytest.mark.parametrize("steps", [8, 40])
def test_real_sequences_are_drawn_on_their_own_scale(tmp_path, monkeypatch, steps):
    """Values of -20 to 30: images read row by row (8 x 8) on that grey scale, GIF included; a long series (40 x 8)
    as series, without the GIF."""
    from aevb import plotting

    drawn = {}
    monkeypatch.setattr(plotting, "image_grid", lambda *a, value_range, **k: drawn.setdefault("grids", []).append(
        value_range))
    monkeypatch.setattr(plotting, "rows_animation", lambda *a, value_range, **k: drawn.update(gif=value_range))
    monkeypatch.setattr(plotting, "series", lambda x, path, **k: drawn.setdefault("series", []).append(path.name))
    x = np.linspace(-20, 30, 60 * steps * 8).reshape(60, steps, 8)
    np.save(tmp_path / "real.npy", x)
    assert main(["fit", "vrnn", "--dataset", str(tmp_path / "real.npy"), "--likelihood", "gaussian", "--epochs", "1",
                 "--hidden", "8", "--mlp-dim", "8", "--batch-size", "25", "--iwae", "0", "--out",
                 str(tmp_path / "run"), "--no-progress"]) == 0
    test_range = json.loads((tmp_path / "run" / "config.json").read_text())["data"]["range"]
    assert -20 <= test_range[0] < 0 and 1 < test_range[1] <= 30
    if steps == 8:
        assert drawn == {"grids": [test_range] * 2, "gif": test_range}
    else:
        assert drawn == {"series": ["vrnn_decoder_parameters.png", "vrnn_samples.png"]}


def test_cli_fits_evaluates_and_samples_user_sequences(tmp_path, capsys):
    np.save(tmp_path / "seqs.npy", binary_sequences(n=40).numpy())
    out = tmp_path / "run"
    code = main(["fit", "vrnn", "--dataset", str(tmp_path / "seqs.npy"), "--epochs", "1", "--hidden", "8",
                 "--batch-size", "16", "--iwae", "4", "--out", str(out), "--no-progress", "--json"])
    assert code == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["likelihood"] == "bernoulli" and config["data"]["kind"] == "sequences"
    for name in ("vrnn_learning_curve.png", "vrnn_samples.png", "vrnn_generation.gif", "vrnn_tsne.png", "model.pt"):
        assert (out / name).is_file(), name
    assert main(["eval", str(out), "--iwae", "3"]) == 0  # the run's test set is rebuilt as sequences
    assert main(["sample", str(out), "--n", "4"]) == 0 and (out / "samples.png").is_file()


def load(dataset: str, *flags: str) -> tuple[fitting.Data, str]:
    """The data ``aevb fit vrnn --dataset DATASET FLAGS`` trains on, and the transform it chose."""
    args = fitting.parse_fit_args(VRNN, ["--dataset", dataset, *flags])
    return fitting.load_data(args, VRNN), args.transform


@pytest.mark.parametrize("array, flags", [
    (np.random.default_rng(0).integers(0, 2, (30, 5, 7)).astype(np.float32), []),
    (np.random.default_rng(0).integers(0, 2, (30, 5, 7)).astype(np.uint8), []),  # 0/1 pixels: not binarized away
    (np.random.default_rng(0).uniform(size=(30, 5, 7)), ["--likelihood", "cb"]),
    (np.random.default_rng(0).normal(size=(30, 5, 7)) * 10, ["--likelihood", "gaussian"]),  # a real time series
])
def test_user_sequences_are_taken_as_they_are(tmp_path, array, flags):
    np.save(tmp_path / "seqs.npy", array)
    data, transform = load(str(tmp_path / "seqs.npy"), *flags)
    (x_train,), (x_test,) = data.train, data.test
    assert transform == "none" and data.kind == "sequences"
    assert x_train.shape[1:] == x_test.shape[1:] == (5, 7) and len(x_train) + len(x_test) == 30
    values = np.concatenate([x_train.numpy(), x_test.numpy()]).ravel()
    np.testing.assert_array_equal(np.sort(values), np.sort(array.astype(np.float32).ravel()))


def test_digits_are_binarized_rows():
    data, transform = load("digits")
    assert transform == "binarize"
    assert data.train[0].shape[1:] == (8, 8) and len(data.test[0]) == len(data.y_test)
    assert set(data.train[0].unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("array, flags, message", [
    (np.zeros((20, 7)), [], "shape (T, D)"),  # one vector per example: not a sequence
    (np.full((20, 5, 7), 0.5), ["--likelihood", "bernoulli"], "exactly 0 or 1"),
    (np.full((20, 5, 7), 2.0), ["--likelihood", "cb"], "[0, 1]"),
    (np.full((20, 5, 7), 0.5), [], "or use --likelihood cb"),
    (np.full((20, 5, 7), 2.0), [], "found values in [2, 2] (rescale the data, use --likelihood gaussian"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, array, flags, message):
    np.save(tmp_path / "bad.npy", array)
    code = main(["fit", "vrnn", "--dataset", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("aevb: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_bits_per_dim_of_sequences_count_every_step_of_every_row():
    """Dequantized digits read row by row, (N, T, D) = (N, 8, 8): bits/dim divides by T * D = 64 dimensions."""
    from aevb import evaluation

    data, transform = load("digits", "--likelihood", "cb")
    assert transform == "dequantize" and data.levels == 17 and data.test[0].shape[1:] == (8, 8)
    torch.manual_seed(0)
    model = VRNN(VRNNConfig(data_dim=8, seq_len=8, latent_dim=2, hidden_dim=16, mlp_dim=24, likelihood="cb"))
    test = tuple(t[:40] for t in data.test)
    summary = evaluation.evaluate(model, test, num_samples=4, levels=data.levels)
    assert summary["bits_per_dim"] == pytest.approx(
        -(summary["iwae_log_likelihood"] - 64 * np.log(17)) / (64 * np.log(2)))
