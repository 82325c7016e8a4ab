"""VAE and conditional VAE: generic model checks, learning on digits, run round trips, and the CLI's errors."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from aevb.cli import main
from aevb.data import load_dataset, prepare
from aevb import evaluation
from aevb.likelihoods import parameter_image
from aevb import registry
from aevb.models.cvae import CVAE, VARIANTS, CVAEConfig
from aevb.models.vae import VAE, Dropout, VAEConfig
from aevb.trainer import Trainer

B, D, L, C = 6, 12, 3, 4
SMALL = dict(data_dim=D, latent_dim=L, hidden=(16, 16))


def data(likelihood: str, n: int = B) -> torch.Tensor:
    u = torch.rand(n, D, generator=torch.Generator().manual_seed(1))
    return {"cb": u, "bernoulli": (u > 0.5).float(), "gaussian": 4 * u - 2}[likelihood]


def labels(n: int = B) -> torch.Tensor:
    return torch.arange(n) % C


# name -> (model, batch): every model and likelihood through the same checks
EXAMPLES = {
    **{f"vae-{lik}": (lambda lik=lik: (VAE(VAEConfig(**SMALL, likelihood=lik)), (data(lik),)))
       for lik in ("cb", "bernoulli", "gaussian")},
    "vae-gaussian-fixed-scale": lambda: (VAE(VAEConfig(**SMALL, likelihood="gaussian", likelihood_scale=0.5)),
                                         (data("gaussian"),)),
    **{f"cvae-{variant}": (lambda variant=variant: (CVAE(CVAEConfig(**SMALL, num_classes=C, variant=variant)),
                                                    (data("cb"), labels())))
       for variant in VARIANTS},
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_samples_lie_in_the_likelihoods_support_and_parameter_images_have_the_data_shape(name):
    torch.manual_seed(0)
    model, batch = EXAMPLES[name]()
    context = batch[1:]
    x = model.sample(B, *context)
    likelihood = model.config.likelihood
    if likelihood == "cb":
        assert ((x >= 0) & (x <= 1)).all()
    if likelihood == "bernoulli":
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert parameter_image(model.decode(B, *context)).shape == (B, D)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_masks_drop_each_element_independently_with_probability_p_and_keep_the_mean(p):
    torch.manual_seed(0)
    dropout, x = Dropout(p), torch.ones(1000, 501, dtype=torch.float64)  # an odd size: the last 64-bit draw is cut
    y = dropout(x.requires_grad_())
    kept = y != 0
    n = kept.numel()
    assert abs(kept.double().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5  # binomial: 4 sigma
    assert y.dtype == x.dtype and torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - round(p * 65536) / 65536)))
    assert abs(y.mean().item() - 1) < 4 * (p / (1 - p) / n) ** 0.5  # E[y] = x
    (gradient,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gradient, y.detach())  # the same mask and scale backward
    pairs = torch.stack([kept[:, :-1].reshape(-1), kept[:, 1:].reshape(-1)]).double()  # neighbours, in one draw or two
    assert abs(torch.corrcoef(pairs)[0, 1].item()) < 4 / (n ** 0.5)
    dropout.eval()
    assert torch.equal(dropout(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))  # p beyond 16 bits' reach: torch's own dropout


@pytest.mark.compile
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_dropout_draws_every_mask_as_eager_does():
    """Two draws of one layer on one tensor stay two draws when compiled (a pure operator would be merged into one),
    and the compiled code's masks are eager's, draw for draw, with the same gradient."""
    dropout, x = Dropout(0.5), torch.ones(4, 40, requires_grad=True)
    twice = lambda x: torch.stack([dropout(x), dropout(x)])  # noqa: E731
    results = []
    for f in (twice, torch.compile(twice)):
        torch.manual_seed(0)
        y = f(x)
        (gradient,) = torch.autograd.grad((y * torch.arange(2.0).view(2, 1, 1)).sum(), x)
        results.append((y.detach(), gradient))
    (eager, eager_gradient), (compiled, compiled_gradient) = results
    assert not torch.equal(eager[0], eager[1])
    assert torch.equal(compiled, eager) and torch.equal(compiled_gradient, eager_gradient)


def test_conditional_model_uses_the_label():
    torch.manual_seed(0)
    model = CVAE(CVAEConfig(**SMALL, num_classes=C)).eval()
    x = data("cb", 1).expand(C, D)
    with torch.no_grad():
        by_label = model.elbo(x, torch.arange(C)).kl
    assert by_label.unique().numel() == C  # p(z|y) and q(z|x,y) both see y
    assert registry.resolve("cvae") is CVAE and registry.resolve("vae") is VAE


def test_training_improves_the_test_elbo_on_digits():
    x_train, _, x_test, _ = prepare(load_dataset("digits"), "dequantize", seed=0)
    torch.manual_seed(0)
    model = VAE(VAEConfig(data_dim=64, latent_dim=8, hidden=(64, 64)))
    before = evaluation.test_elbo(model, (x_test,)).item()
    history = Trainer(model, lr=3e-3, batch_size=100, progress=False).fit(
        (x_train,), epochs=8, evaluate=lambda m: {"test_elbo": evaluation.test_elbo(m, (x_test,))})
    curve = [r["test_elbo"] for r in history]
    assert curve[-1] > curve[0] > before
    assert curve[-1] - before > 50  # nats per example: from noise to digit-like densities


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


FAST = ["--hidden", "32", "--latent-dim", "4", "--epochs", "2", "--iwae", "5", "--no-progress"]


@pytest.mark.parametrize("model", ["vae", "cvae"])
def test_fit_eval_and_sample_from_the_command_line(model, tmp_path, capsys):
    run = tmp_path / model
    code, out, _ = cli(["fit", model, *FAST, "--out", run, "--json"], capsys)
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["iwae_samples"] == 5 and summary["iwae_log_likelihood"] > summary["test_elbo"] - 1
    assert 0 < summary["bits_per_dim"] < np.log2(17)  # better than uniform over the digits' 17 levels
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all("test_elbo" in r for r in records)
    figures = {"learning_curve", "decoder_parameters", "samples", "tsne"}
    assert all((run / f"{model}_{f}.png").is_file() for f in figures)

    # the checkpoint reloaded: the same test ELBO and IWAE estimate (evaluation is seeded by the run's seed)
    code, out, _ = cli(["eval", run, "--iwae", "5", "--json"], capsys)
    assert code == 0
    evaluated = json.loads(out.strip().splitlines()[-1])
    assert {k: evaluated[k] for k in ("test_elbo", "iwae_log_likelihood", "bits_per_dim")} == {
        k: summary[k] for k in ("test_elbo", "iwae_log_likelihood", "bits_per_dim")}
    # --seed: other draws of the same bounds, on the run's own test set (a changed one would be warned of)
    estimates = {}
    for seed in (0, 1):
        code, out, _ = cli(["eval", run, "--iwae", "5", "--seed", seed, "--json"], capsys)
        estimates[seed] = json.loads(out.strip().splitlines()[-1])
        assert code == 0 and "warnings" not in estimates[seed]
    assert estimates[0] == evaluated and evaluated["seed"] == 0 and estimates[1]["seed"] == 1  # the run's seed is 0
    assert all(estimates[1][k] != evaluated[k] and abs(estimates[1][k] - evaluated[k]) < 1
               for k in ("test_elbo", "iwae_log_likelihood"))

    flags = ["--label", "3"] if model == "cvae" else []
    code, out, _ = cli(["sample", run, "--n", "4", *flags, "--out", tmp_path / "s.png", "--json"], capsys)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["samples"] == 4
    assert (tmp_path / "s.png").is_file()
    code, _, err = cli(["sample", run, "--label", 10 if model == "cvae" else 3], capsys)  # no such class / no labels
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--label" in err


def bad_inputs(tmp_path) -> dict[str, list]:
    np.save(tmp_path / "unlabelled.npy", np.random.default_rng(0).integers(0, 256, (30, 6, 6), dtype=np.uint8))
    np.save(tmp_path / "four_d.npy", np.zeros((30, 2, 3, 3), dtype=np.uint8))
    return {
        "cb outside [0, 1]": ["fit", "vae", "--transform", "none"],
        "bernoulli, not binary": ["fit", "vae", "--likelihood", "bernoulli", "--transform", "dequantize"],
        "wrong shape": ["fit", "vae", "--dataset", tmp_path / "four_d.npy"],
        "cvae without labels": ["fit", "cvae", "--dataset", tmp_path / "unlabelled.npy"],
        "unknown dataset": ["fit", "vae", "--dataset", "imagenet"],
        "bad hidden sizes": ["fit", "vae", "--hidden", "500,x"],
        "eval of no run": ["eval", tmp_path / "nothing-here"],
    }


@pytest.mark.parametrize("case", ["cb outside [0, 1]", "bernoulli, not binary", "wrong shape", "cvae without labels",
                                  "unknown dataset", "bad hidden sizes", "eval of no run"])
def test_bad_input_gives_one_line_and_exit_code_2(case, tmp_path, capsys):
    argv = bad_inputs(tmp_path)[case]
    out_flags = ["--out", tmp_path / "run"] if argv[0] == "fit" else []
    code, _, err = cli([*argv, *out_flags], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not (tmp_path / "run").exists()

