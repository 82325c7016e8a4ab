"""The one fit path: a user's own model from a file or an installed package, the same commands for every
built-in model, flags from config dataclasses, self-contained run directories, figures by kind of data."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb import fitting, registry
from aevb.arguments import LocalEStep
from aevb.cli import main
from aevb.errors import UsageError
from aevb.reproduce import QUICK_TOUR, plan

USER_MODEL = '''
"""A linear-Gaussian model written against the public contract only."""
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributions import Independent, Normal

from aevb import elbo as estimators, fitting
from aevb.model import LatentVariableModel


@dataclass
class Config:
    data_dim: int = 5
    latent_dim: int = field(default=2, metadata={"help": "latent dimension L"})


class Linear(LatentVariableModel):
    Config = Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.generative = nn.Linear(config.latent_dim, config.data_dim)
        self.inference = nn.Linear(config.data_dim, 2 * config.latent_dim)

    def q_z_given_x(self, x):
        loc, raw_scale = self.inference(x).chunk(2, -1)
        return Independent(Normal(loc, nn.functional.softplus(raw_scale)), 1)

    def factors(self, x):
        p_z = Independent(Normal(torch.zeros(self.config.latent_dim), torch.ones(self.config.latent_dim)), 1)
        return self.q_z_given_x(x), p_z, lambda z: Independent(Normal(self.generative(z), 1.0), 1)

    def sample(self, num_samples):
        return self.factors(torch.zeros(1, self.config.data_dim))[2](torch.randn(num_samples, self.config.latent_dim)).sample()

    def encode(self, x):
        return self.q_z_given_x(x).mean


class OneEstimator(Linear):
    estimators = ()  # its ELBO offers no choice of estimator


class NoCode(OneEstimator):
    """An ELBO of its own, and no encode."""

    def elbo(self, x):
        return estimators.elbo(x, *Linear.factors(self, x))

    def log_importance_weights(self, x, num_samples):
        return estimators.log_importance_weights(x, *Linear.factors(self, x), num_samples)

    def factors(self, x):
        raise NotImplementedError("no factors")

    def sample(self, num_samples):
        return Linear.factors(self, torch.zeros(1, self.config.data_dim))[2](
            torch.randn(num_samples, self.config.latent_dim)).sample()

    encode = LatentVariableModel.encode


# Mistakes a researcher makes, each of which trained before aevb fit checked the contract (or failed after it)
class LearnedPrior(Linear):
    def __init__(self, config):
        super().__init__(config)
        self.prior_loc = nn.Parameter(torch.zeros(config.latent_dim))  # in neither group


class PerCoordinateQ(Linear):
    def q_z_given_x(self, x):
        return Linear.q_z_given_x(self, x).base_dist  # (B, L): it broadcasts against a batch of 2 with L = 2


class SampledZ(Linear):
    def q_z_given_x(self, x):
        q = Linear.q_z_given_x(self, x)
        q.rsample = q.sample  # no gradient reaches phi through z
        return q


class TransposedWeights(Linear):
    def log_importance_weights(self, x, num_samples):
        return super().log_importance_weights(x, num_samples=num_samples).T


class NumberCode(Linear):
    def encode(self, x):
        return self.q_z_given_x(x).mean.sum(-1)


class WideSample(Linear):
    def sample(self, num_samples):
        return torch.randn(num_samples, self.config.data_dim + 1)


class EarlyModule(Linear):
    def __init__(self, config):
        self.generative = nn.Linear(config.latent_dim, config.data_dim)  # before nn.Module's __init__
        super().__init__(config)


@dataclass
class RichConfig:
    data_dim: int = 5
    latent_dim: int = 2
    scales: tuple[float, ...] = (0.5, 1.0)  # no __post_init__: JSON gives it back as a list, which the fit reads back
    widths: list = None


class Rich(Linear):
    Config = RichConfig


class CovariateHooks(fitting.Hooks):
    def data(self):
        """x = c w + noise, with a float covariate c per example (a context other than class labels)."""
        c = torch.cat([torch.linspace(-2, 2, 100), torch.linspace(-2, 2, 20)])[:, None]
        x = c * torch.arange(1.0, 6.0) + torch.randn(120, 5, generator=torch.Generator().manual_seed(0))
        return fitting.Data(train=(x[:100], c[:100]), test=(x[100:], c[100:]), y_test=None, shape=(5,), kind="vectors")


class Covariate(Linear):
    """p(x | z, c) = N(W z + b + c v, I), v = (1, ..., 5) known: sample needs c."""
    hooks = CovariateHooks

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("v", torch.arange(1.0, config.data_dim + 1))

    def factors(self, x, c):
        p_z = Independent(Normal(torch.zeros(self.config.latent_dim), torch.ones(self.config.latent_dim)), 1)
        return self.q_z_given_x(x), p_z, lambda z: Independent(Normal(self.generative(z) + c * self.v, 1.0), 1)

    def sample(self, num_samples, c):
        return self.factors(torch.zeros(num_samples, self.config.data_dim), c)[2](
            torch.randn(num_samples, self.config.latent_dim)).sample()

    def encode(self, x, c):
        return self.q_z_given_x(x).mean
'''


def cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's errors and help
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def user_files(tmp_path) -> tuple[Path, Path]:
    """A model file and a data file, in a folder outside the repository."""
    (tmp_path / "mine.py").write_text(USER_MODEL)
    x = np.random.default_rng(0).normal(size=(120, 2)) @ np.random.default_rng(1).normal(size=(2, 5))
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    return tmp_path / "mine.py", tmp_path / "x.npy"


def test_a_user_model_from_a_file_is_fitted_evaluated_and_sampled_from_anywhere(user_files, tmp_path, capsys, monkeypatch):
    model_file, data_file = user_files
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["fit", "--model", "mine.py:Linear", "--dataset", "x.npy", "--latent-dim", "3",
                          "--schedule", "alternate:4,4", "--epochs", "3", "--batch-size", "20", "--iwae", "8",
                          "--out", "run", "--no-progress", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["model"] == f"{model_file.resolve()}:Linear" and summary["schedule"] == "alternate:4,4"
    assert summary["iwae_log_likelihood"] > summary["test_elbo"] - 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and {r["phase"] for r in records} == {"mixed"}  # 5 steps an epoch, phases of 4
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"] == {"data_dim": 5, "latent_dim": 3} and config["args"]["dataset"] == str(data_file)
    assert {"linear_learning_curve.png", "linear_samples.png", "linear_tsne.png"} <= {
        p.name for p in (tmp_path / "run").iterdir()}

    monkeypatch.chdir(tmp_path.parent)  # the run directory records absolute paths: it works from anywhere
    run = tmp_path / "run"
    code, out, err = cli(["eval", run, "--iwae", "8", "--json"], capsys)
    assert code == 0, err
    evaluated = json.loads(out.splitlines()[-1])
    assert evaluated["test_elbo"] == summary["test_elbo"] and evaluated["iwae_log_likelihood"] == summary["iwae_log_likelihood"]
    for suffix in (".png", ".npy", ".npz"):
        code, _, err = cli(["sample", run, "--n", "7", "--out", tmp_path / f"s{suffix}"], capsys)
        assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (7, 5) and np.load(tmp_path / "s.npz")["x"].shape == (7, 5)
    assert fitting.load_run(run).model.config.latent_dim == 3


def test_a_model_imported_by_a_script_from_its_folder_is_recorded_by_file(user_files, tmp_path, capsys):
    """``python train.py`` with ``from mine import Linear`` beside it: another process, in another folder, cannot
    import ``mine`` by name, so the run records the file, and ``aevb eval`` (no script folder on its path) works."""
    model_file, data_file = user_files
    (tmp_path / "train.py").write_text(
        "from aevb.fitting import fit_run\nfrom mine import Linear\n"
        f"fit_run(Linear, 'run', dataset={str(data_file)!r}, epochs=1, iwae=0, progress=False)\n")
    subprocess.run([sys.executable, "train.py"], cwd=tmp_path, check=True, capture_output=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == f"{model_file.resolve()}:Linear"
    code, _, err = cli(["eval", tmp_path / "run", "--iwae", "2"], capsys)
    assert code == 0, err
    assert registry.reference(fitting.Trainer) == "aevb.trainer:Trainer"  # a package's module keeps its name


def test_the_config_dataclass_gives_the_flags(user_files, capsys):
    model_file, _ = user_files
    code, out, _ = cli(["fit", "--model", f"{model_file}:Linear", "--help"], capsys)
    assert code == 0
    assert "--latent-dim LATENT_DIM" in out and "latent dimension L (default 2)" in out and "--data-dim" not in out
    assert "alternate:E,M" in out  # every schedule, for every model


def test_a_model_without_a_choice_of_estimator_has_no_estimator_flag(user_files, capsys):
    model_file, data_file = user_files
    code, out, _ = cli(["fit", "--model", f"{model_file}:OneEstimator", "--help"], capsys)
    assert code == 0 and "--estimator" not in out
    code, _, err = cli(["fit", "--model", f"{model_file}:OneEstimator", "--dataset", data_file, "--estimator", "sgvb"],
                       capsys)
    assert code == 2 and "unrecognized arguments: --estimator sgvb" in err and len(err.strip().splitlines()) == 1
    run = model_file.parent / "run"
    code, _, err = cli(["fit", "--model", f"{model_file}:OneEstimator", "--dataset", data_file, "--epochs", "1",
                        "--iwae", "0", "--out", run, "--no-progress"], capsys)
    assert code == 0, err
    for command in (["eval", run, "--iwae", "2"], ["resume", run], ["sample", run, "--n", "2"]):
        code, _, err = cli(command, capsys)  # its run reads back, without an --estimator flag to record
        assert code == 0, (command, err)


def test_a_model_with_its_own_elbo_and_no_encode_is_refused_before_training(user_files, tmp_path, capsys):
    model_file, data_file = user_files
    code, _, err = cli(["fit", "--model", f"{model_file}:NoCode", "--dataset", data_file, "--out", tmp_path / "run",
                        "--no-progress"], capsys)
    assert code == 2 and "NoCode defines no encode(): a model with an elbo() of its own defines encode(x)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("cls, message", [
    ("LearnedPrior", "parameter groups: prior_loc in neither group"),
    ("PerCoordinateQ", "elbo terms: factors' q(z|x) has batch shape (7, 2) and event shape ()"),
    ("SampledZ", "reparameterization: the log-likelihood term does not reach any inference (phi) parameter"),
    ("TransposedWeights", "importance weights: log_importance_weights(num_samples=5) has shape (7, 5)"),
    ("NumberCode", "encode: encode(*batch) has shape (7,); expected shape (7, L)"),
    ("WideSample", "sample: sample(7) has shape (7, 6); expected shape (7, 5)"),
])
def test_a_model_that_breaks_the_contract_is_refused_before_training(cls, message, user_files, tmp_path, capsys):
    model_file, data_file = user_files
    code, _, err = cli(["fit", "--model", f"{model_file}:{cls}", "--dataset", data_file, "--epochs", "1",
                        "--out", tmp_path / "run", "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"breaks the model contract on 7 examples of --dataset {data_file} (vectors" in err and message in err, err
    assert not (tmp_path / "run").exists()


def test_an_init_that_sets_modules_before_the_base_class_is_one_line(user_files, tmp_path, capsys):
    model_file, data_file = user_files
    code, _, err = cli(["fit", "--model", f"{model_file}:EarlyModule", "--dataset", data_file, "--out",
                        tmp_path / "run"], capsys)
    assert code == 2 and err.strip() == ("aevb: error: earlymodule: its __init__ sets a module or parameter before "
                                         "super().__init__(config); call super().__init__(config) first")


def test_tuple_fields_take_floats_or_ints_and_a_field_without_a_value_has_no_default(user_files, tmp_path, capsys):
    model_file, data_file = user_files
    code, out, _ = cli(["fit", "--model", f"{model_file}:Rich", "--help"], capsys)
    assert code == 0 and "(default 0.5,1.0)" in out and "(default None)" in out
    code, _, err = cli(["fit", "--model", f"{model_file}:Rich", "--dataset", data_file, "--scales", "0.25,x"], capsys)
    assert code == 2 and "--scales: expected comma-separated numbers such as 0.5,1, got '0.25,x'" in err
    code, _, err = cli(["fit", "--model", f"{model_file}:Rich", "--dataset", data_file, "--scales", "0.25,2",
                        "--widths", "3,4", "--epochs", "1", "--iwae", "0", "--out", tmp_path / "run", "--no-progress"],
                       capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["scales"] == [0.25, 2.0] and config["widths"] == [3, 4]


def test_a_model_file_imports_the_modules_beside_it_and_a_changed_config_is_named(user_files, tmp_path, capsys):
    model_file, data_file = user_files
    (tmp_path / "sizes.py").write_text("LATENT = 3\n")
    (tmp_path / "sibling.py").write_text(model_file.read_text().replace(
        "latent_dim: int = field(default=2", "latent_dim: int = field(default=__import__('sizes').LATENT"))
    run = tmp_path / "run"
    code, _, err = cli(["fit", "--model", f"{tmp_path / 'sibling.py'}:Linear", "--dataset", data_file, "--epochs", "1",
                        "--iwae", "0", "--out", run, "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["config"]["latent_dim"] == 3
    model_file.write_text(model_file.read_text().replace("    latent_dim: int", "    extra: float = 1.0\n    latent_dim: int"))
    code, _, _ = cli(["fit", "--model", f"{model_file}:Linear", "--dataset", data_file, "--epochs", "1",
                      "--iwae", "0", "--out", tmp_path / "mine", "--no-progress"], capsys)
    assert code == 0
    edited = json.loads((tmp_path / "mine" / "config.json").read_text())
    del edited["args"]["config_extra"]  # as the run of the class before it had the field
    (tmp_path / "mine" / "config.json").write_text(json.dumps(edited))
    code, _, err = cli(["eval", tmp_path / "mine", "--iwae", "2"], capsys)
    assert code == 2 and ("the run was fitted with another linear Config (the class has a field extra it did not "
                          "have); restore the Config it had, or fit the run again") in err


def test_a_model_given_a_float_covariate_is_fitted_and_drawn_given_the_test_covariates(user_files, tmp_path, capsys,
                                                                                       monkeypatch):
    """Its data come from its hooks as (x, c); sample(n, c) cannot do without c, which aevb sample cannot give."""
    model_file, _ = user_files
    from aevb import plotting

    drawn = {}
    monkeypatch.setattr(plotting, "vectors", lambda samples, data, path, title, **kwargs: drawn.update(
        samples=samples, data=data, title=title))
    run = tmp_path / "run"
    code, out, err = cli(["fit", "--model", f"{model_file}:Covariate", "--epochs", "3",
                          "--iwae", "0", "--out", run, "--no-progress", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["evidence"] == "log p(x | c)"
    assert drawn["title"] == "samples x ~ p(x | c) for the contexts c of the first 20 test examples"
    assert len(drawn["samples"]) == len(drawn["data"]) == 20  # beside the test examples of those contexts
    # the samples follow the contexts: x_5 - x_1 = 4 c + noise, and c rises from -2 to 2 over the test examples
    assert np.corrcoef(drawn["samples"][:, 4] - drawn["samples"][:, 0], np.arange(20))[0, 1] > 0.8

    code, _, err = cli(["sample", run, "--n", "3", "--out", tmp_path / "s.npz"], capsys)
    assert code == 2 and "Covariate.sample needs a context" in err and not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("command", ["eval", "diagnose", "sample"])
def test_threads_sets_torchs_threads_for_the_command_and_restores_them(command, tmp_path, capsys, monkeypatch):
    seen = []
    for name in ("evaluate_run", "diagnose_run", "sample_run"):
        monkeypatch.setattr(fitting, name, lambda *args, **kwargs: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    code, _, err = cli([command, tmp_path, "--threads", other], capsys)
    assert code == 0, err
    assert seen == [other] and torch.get_num_threads() == before


def test_counts_are_drawn_on_a_grey_scale_of_their_range(user_files, tmp_path, capsys, monkeypatch):
    """Integer images of 0 to 16 modelled as they are (no dequantization): their figures span 0 to 16, not 0 to 1."""
    model_file, _ = user_files
    np.save(tmp_path / "counts.npy", np.random.default_rng(0).integers(0, 17, size=(120, 4, 4)))
    run = tmp_path / "run"
    code, _, err = cli(["fit", "--model", f"{model_file}:Linear", "--dataset", tmp_path / "counts.npy", "--transform",
                        "none", "--epochs", "1", "--iwae", "0", "--out", run, "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["data"]["range"] == [0.0, 16.0]
    from aevb import plotting

    shown = {}
    monkeypatch.setattr(plotting, "save", lambda fig, path: shown.update(
        title=fig.axes[0].get_title(), canvas=fig.axes[0].images[0].get_array()))
    fitting.plot_examples(torch.full((2, 16), 8.0), None, (4, 4), "images", tmp_path / "x.png", "samples",
                          value_range=(0.0, 16.0))
    assert shown["canvas"][0, 0] == 0.5 and shown["title"] == "samples; grey levels from 0 to 16"
    fitting.plot_examples(torch.full((2, 16), 20.0), None, (4, 4), "images", tmp_path / "x.png", "samples",
                          value_range=(0.0, 16.0))  # the clipping note names the range shown
    assert shown["title"] == "samples; grey levels from 0 to 16 (100% of the values lie outside [0, 16], shown clipped)"


def test_vectors_drawn_class_by_class_are_shown_beside_test_examples_of_the_same_classes(tmp_path, monkeypatch):
    from aevb import plotting

    plotting.vectors(np.zeros((6, 3)), np.zeros((4, 3)), tmp_path / "drawn.png", sample_classes=np.repeat([0, 1, 2], 2),
                     data_classes=np.array([0, 0, 1, 2]))
    assert (tmp_path / "drawn.png").stat().st_size > 1000
    shown = {}
    monkeypatch.setattr(plotting, "vectors", lambda samples, data, path, **kwargs: shown.update(data=data, **kwargs))
    x_test, y_test = torch.arange(12.0)[:, None].repeat(1, 3), torch.tensor([2, 0, 1, 0, 2, 2, 0, 1, 1, 0, 2, 0])
    fitting.plot_examples(torch.zeros(6, 3), ["0", "1", "2"], (3,), "vectors", tmp_path / "x.png", "samples",
                          reference=x_test, reference_labels=y_test)
    assert shown["sample_classes"].tolist() == [0, 0, 1, 1, 2, 2]
    assert shown["data_classes"].tolist() == [0, 0, 1, 1, 2, 2]
    assert shown["data"][:, 0].tolist() == [1, 3, 2, 7, 0, 4]  # the first test examples of each class, in order

    fitting.plot_examples(torch.zeros(6, 3), ["0", "1", "2"], (3,), "vectors", tmp_path / "x.png", "samples",
                          reference=x_test[:4], reference_labels=y_test[:4])  # class 1 has one test example
    assert shown["data_classes"].tolist() == [0, 0, 1, 2] and shown["sample_classes"].tolist() == [0, 0, 1, 1, 2, 2]


def test_sequences_of_images_are_drawn_as_images_and_other_sequences_as_series_over_time(tmp_path, monkeypatch):
    from aevb import plotting

    assert plotting.image_like((28, 28)) and plotting.image_like((8, 32)) and plotting.image_like((28, 28, 3)) is False
    assert not plotting.image_like((120, 2)) and not plotting.image_like((2, 120))
    x = torch.rand(5, 120, 2)
    plotting.series(x.numpy(), tmp_path / "lines.png")  # as lines
    plotting.series(torch.rand(5, 120, 20).numpy(), tmp_path / "heat.png")  # as heat maps
    plotting.series(x.numpy(), tmp_path / "beside.png", reference=x.numpy()[:3])  # beside test data
    plotting.series(torch.rand(5, 120, 20).numpy(), tmp_path / "beside-heat.png",
                    reference=torch.rand(3, 120, 20).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of a y scale of no height
        plotting.series(np.ones((2, 1, 5)), tmp_path / "one-step.png", labels=["a", "b"])  # one constant point each
    assert all((tmp_path / f"{name}.png").stat().st_size > 1000 for name in ("lines", "heat", "beside", "beside-heat"))

    drawn = {}
    monkeypatch.setattr(plotting, "series", lambda x, path, **kwargs: drawn.update(series=x))
    monkeypatch.setattr(plotting, "image_grid", lambda images, *args, **kwargs: drawn.update(grid=images))
    fitting.plot_examples(x.flatten(1), None, (120, 2), "sequences", tmp_path / "x.png", "samples")
    assert np.array_equal(drawn.pop("series"), x.numpy()) and not drawn
    fitting.plot_examples(torch.rand(5, 8, 8), None, (8, 8), "sequences", tmp_path / "x.png", "samples")
    assert drawn.pop("grid").shape == (1, fitting.GRID_COLUMNS, 8, 8) and not drawn
    fitting.plot_examples(x.flatten(1), None, (120, 2), "images", tmp_path / "x.png", "samples")  # no image's shape
    assert np.array_equal(drawn.pop("series"), x.numpy()) and not drawn
    by_class = torch.arange(3.0).repeat_interleave(10)[:, None, None].expand(30, 120, 2)  # 10 of each of 3 classes
    monkeypatch.setattr(plotting, "series", lambda x, path, **kwargs: drawn.update(series=x, **kwargs))
    fitting.plot_examples(by_class, ["0", "1", "2"], (120, 2), "sequences", tmp_path / "x.png", "samples")
    assert drawn["labels"] == ["y = 0"] * 4 + ["y = 1"] * 4 + ["y = 2"] * 4  # 12 panels, as many of each class
    assert drawn["series"][:, 0, 0].tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 4 and drawn["reference"] is None
    test_labels = torch.tensor([2, 0, 1, 2, 2, 2, 2, 0])  # 2 of class 0, 1 of class 1, 5 of class 2
    test_x = test_labels.float()[:, None, None].expand(8, 120, 2) + 10
    fitting.plot_examples(by_class, ["0", "1", "2"], (120, 2), "sequences", tmp_path / "x.png", "samples",
                          reference=test_x, reference_labels=test_labels)
    assert drawn["reference_labels"] == ["y = 0"] * 2 + ["y = 1"] + ["y = 2"] * 4  # each class's, up to 4
    assert drawn["reference"][:, 0, 0].tolist() == [10.0] * 2 + [11.0] + [12.0] * 4
    fitting.plot_examples(x.flatten(1), None, (120, 2), "sequences", tmp_path / "x.png", "samples", reference=test_x)
    assert np.array_equal(drawn["reference"], test_x.numpy()) and drawn["reference_labels"] is None


def test_a_model_installed_by_a_package_is_found_through_its_entry_point(user_files, tmp_path, capsys, monkeypatch):
    """A throwaway package, installed as pip would (a dist-info with entry_points.txt) on sys.path."""
    model_file, data_file = user_files
    site = tmp_path / "site"
    (site / "mypkg").mkdir(parents=True)
    (site / "mypkg" / "__init__.py").write_text(USER_MODEL)
    info = site / "mypkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[aevb.models]\nmine = mypkg:Linear\n")
    monkeypatch.syspath_prepend(str(site))
    assert "mine" in registry.names() and registry.resolve("mine").__module__ == "mypkg"
    code, out, _ = cli(["fit", "--help"], capsys)
    assert "mine" in out
    code, out, err = cli(["fit", "mine", "--dataset", data_file, "--epochs", "1", "--iwae", "2",
                          "--out", tmp_path / "run", "--no-progress", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["model"] == "mine"
    assert cli(["sample", tmp_path / "run", "--n", "3"], capsys)[0] == 0


@pytest.mark.parametrize("argv", [[], ["fit"], *(["fit", name] for name in registry.BUILTIN)])
def test_help_prints_the_docstrings_code_as_markdown_does_not_as_restructuredtext(argv, capsys):
    code, out, _ = cli([*argv, "--help"], capsys)
    assert code == 0 and "``" not in out and "`" in out


@pytest.mark.parametrize("ref, message", [
    ("nonesuch", "unknown model 'nonesuch'"),
    ("missing.py:Model", "no such file"),
    ("mine.py:Nonesuch", "has no Nonesuch"),
    ("mine.py:Config", "not a subclass of aevb.model.LatentVariableModel"),
    ("broken.py:Model", "fails to import (ZeroDivisionError"),
    ("no.such.module:Model", "cannot import no.such.module"),
])
def test_a_bad_model_reference_is_one_line(ref, message, user_files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("1 / 0\n")
    code, _, err = cli(["fit", "--model", ref, "--out", tmp_path / "run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_run_whose_model_now_samples_the_wrong_shape_is_one_line(user_files, tmp_path, capsys, monkeypatch):
    model_file, data_file = user_files
    assert cli(["fit", "--model", f"{model_file}:Linear", "--dataset", data_file, "--epochs", "1", "--iwae", "0",
                "--out", tmp_path / "run", "--no-progress"], capsys)[0] == 0
    monkeypatch.setattr(registry.resolve(f"{model_file}:Linear"), "sample", lambda self, n: torch.zeros(n + 1, 5))
    code, _, err = cli(["sample", tmp_path / "run", "--n", "3", "--out", tmp_path / "s.npy"], capsys)
    assert code == 2 and err.strip() == ("aevb: error: Linear.sample(3) gives (4, 5), not (3, ...) of examples of "
                                         "shape (5,); fix its sample() (aevb.testing.check_model checks it)")
    assert not (tmp_path / "s.npy").exists()


def test_a_run_whose_model_can_no_longer_be_imported_is_one_line(user_files, tmp_path, capsys):
    model_file, data_file = user_files
    assert cli(["fit", "--model", f"{model_file}:Linear", "--dataset", data_file, "--epochs", "1", "--iwae", "0",
                "--out", tmp_path / "run", "--no-progress"], capsys)[0] == 0
    model_file.unlink()
    for command in (["eval", tmp_path / "run"], ["sample", tmp_path / "run"]):
        code, _, err = cli(command, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "no such file" in err


# Flags after the tour's: codes of two dimensions are drawn as they are, without the t-SNE that took most of a fit's time
FASTER = {"vae": ["--latent-dim", "2"], "cvae": ["--latent-dim", "2"]}


@pytest.mark.parametrize("experiment", ["fa-1", "vae", "cvae", "gmvae", "vrnn"])
def test_every_built_in_model_is_fitted_evaluated_and_sampled_through_the_same_commands(experiment, tmp_path, capsys):
    planned, = plan([experiment], dataset="digits", budget=QUICK_TOUR)
    run = tmp_path / "run"
    code, _, err = cli(["fit", planned.experiment.model, *planned.argv, *FASTER.get(experiment, []), "--schedule",
                        "alternate:3,2", "--out", run, "--no-progress"], capsys)
    assert code == 0, err
    code, out, err = cli(["eval", run, "--iwae", "3", "--json"], capsys)
    assert code == 0 and "iwae_log_likelihood" in json.loads(out.splitlines()[-1]), err
    for out_file in ("samples.png", "samples.npz"):
        code, out, err = cli(["sample", run, "--n", "4", "--out", tmp_path / out_file], capsys)
        assert code == 0, err
    x = np.load(tmp_path / "samples.npz")["x"]
    assert len(x) == (4 * 10 if experiment == "cvae" else 4) and np.isfinite(x).all()


def test_vector_data_are_drawn_as_a_heat_map_not_a_strip_of_pixels(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(size=(300, 50)).astype(np.float32))
    code, _, err = cli(["fit", "vae", "--dataset", tmp_path / "x.npy", "--hidden", "16", "--latent-dim", "2", "--epochs",
                        "1", "--iwae", "2", "--out", tmp_path / "run", "--no-progress"], capsys)
    assert code == 0, err
    from matplotlib.image import imread

    for figure in ("vae_samples.png", "vae_decoder_parameters.png"):
        height, width = imread(tmp_path / "run" / figure).shape[:2]
        assert width < 3000 and height < 3000 and width / height < 4, (figure, width, height)


def test_fit_run_from_python_is_aevb_fit(user_files, tmp_path, capsys):
    model_file, data_file = user_files
    cls = registry.resolve(f"{model_file}:Linear")
    summary = fitting.fit_run(cls, tmp_path / "run", progress=False, dataset=data_file, latent_dim=1,
                              schedule="e-step", epochs=2, iwae=0)
    assert summary["schedule"] == "e-step" and "iwae_log_likelihood" not in summary
    run = fitting.load_run(tmp_path / "run")
    assert run.model.config.latent_dim == 1 and isinstance(run.model, cls)
    with pytest.raises(UsageError, match="fixed scale"):
        fitting.fit_run("vae", tmp_path / "bad", progress=False, gaussian_scale=0.5, epochs=1)
    with pytest.raises(TypeError, match="unexpected keyword 'laten_dim': Linear has no flag --laten-dim") as error:
        fitting.fit_run(cls, tmp_path / "bad", progress=False, dataset=data_file, laten_dim=3)
    command = str(error.value).split("(")[-1].removesuffix(" lists them)").split()  # a command that runs
    assert command[:3] == ["aevb", "fit", "--model"] and cli([*command[1:]], capsys)[0] == 0
    with pytest.raises(TypeError, match="'latent'"):  # no abbreviations: argparse would take it for --latent-dim
        fitting.fit_run(cls, tmp_path / "bad", progress=False, dataset=data_file, latent=3)
    with pytest.raises(ValueError, match="fit_run: argument --epochs: must be a positive integer, got 0"):
        fitting.fit_run(cls, tmp_path / "bad", progress=False, dataset=data_file, epochs=0)
    assert not (tmp_path / "bad").exists()
    run = tmp_path / "run"  # the other entry points check their arguments as their flags do
    for call, error, message in [
        (lambda: fitting.evaluate_run(run, -1), ValueError, "evaluate_run: num_samples must be 0 or a positive"),
        (lambda: fitting.evaluate_run(run, 10, refine_steps=2.5), TypeError, "refine_steps must be an integer"),
        (lambda: fitting.evaluate_run(run, 10, seed=2**32), ValueError, "evaluate_run: seed must be"),
        (lambda: fitting.diagnose_run(run, 0, 10, LocalEStep()), ValueError, "diagnose_run: examples must be a positive"),
        (lambda: fitting.sample_run(run, tmp_path / "s.npy", 10**6), ValueError, "num_samples must be at most 1,000"),
        (lambda: fitting.sample_run(run, tmp_path / "s.npy", 3, seed=-1), ValueError, "sample_run: seed must be"),
    ]:
        with pytest.raises(error, match=message):
            call()
    assert not (tmp_path / "s.npy").exists() and not (run / "diagnostics.json").exists()


def test_fit_run_switches_a_flag_off_with_false_and_leaves_the_callers_random_state(user_files, tmp_path):
    model_file, data_file = user_files
    (tmp_path / "switch.py").write_text(USER_MODEL.replace(
        '    latent_dim: int = field(default=2, metadata={"help": "latent dimension L"})',
        '    latent_dim: int = field(default=2, metadata={"help": "latent dimension L"})\n    learn_bias: bool = True'))
    cls = registry.resolve(f"{tmp_path / 'switch.py'}:Linear")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fitting.fit_run(cls, tmp_path / "off", progress=False, dataset=data_file, epochs=1, iwae=0, learn_bias=False)
    assert torch.equal(torch.rand(3), expected)  # fitted from --seed, then the caller's state back
    torch.manual_seed(123)
    assert fitting.load_run(tmp_path / "off").model.config.learn_bias is False
    assert torch.equal(torch.rand(3), expected)  # loading draws an initialization it overwrites, from a fork


def test_the_command_starts_without_importing_torch():
    """`aevb --help` and the other commands' parsing import no heavy module; a model is imported when named."""
    code = ("import sys; from aevb import cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'sklearn', 'scipy') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_python_dash_m_aevb_is_the_command(preloaded_python):
    """`python -m aevb`, in a process of its own forked from one that has imported aevb's modules but not its
    ``__main__`` (conftest.py): runpy runs that as Python's -m does."""
    result = preloaded_python.run(["-m", "aevb", "fit", "--model", "nonesuch"], timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("aevb: error: unknown model 'nonesuch'")


def test_a_reader_that_stops_reading_is_no_error(tmp_path):
    """`aevb fit ... | head -1`, the pipe closed before the summary is printed: exit 0, no traceback."""
    child = subprocess.Popen([sys.executable, "-m", "aevb", "fit", "fa", "--steps", "3", "--iwae", "0", "--out",
                              tmp_path / "run", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before the first line
    err = child.stderr.read().decode()
    assert child.wait(300) == 0 and "Error" not in err, err
    assert json.loads((tmp_path / "run" / "aevb-run.json").read_text())["status"] == "complete"


def test_the_embedding_of_a_collapsed_encoder_is_drawn_without_t_sne(tmp_path, monkeypatch):
    """Every code one point (a collapsed encoder): scikit-learn's t-SNE would crash the process on it."""
    import sklearn.manifold

    from aevb import plotting

    def no_tsne(*args, **kwargs):
        raise AssertionError("t-SNE ran on codes that are all one point")

    monkeypatch.setattr(sklearn.manifold, "TSNE", no_tsne)
    path = plotting.tsne(np.ones((50, 8), dtype=np.float32), np.arange(50) % 3, tmp_path / "codes.png")
    assert path.stat().st_size > 1000


def test_figures_are_drawn_without_pyplot(tmp_path):
    """So that a notebook's matplotlib backend (inline, widget) and its open figures are left as they were."""
    code = ("import sys; from aevb import plotting; "
            f"plotting.curves([{{'epoch': 1, 'a': 1.0}}, {{'epoch': 2, 'a': 2.0}}], {{'a': 'a'}}, {str(tmp_path / 'c.png')!r}); "
            "print('matplotlib.pyplot' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False" and (tmp_path / "c.png").stat().st_size > 1000
