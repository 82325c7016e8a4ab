"""``aevb fit fa`` as a user runs it: the tutorial's two experiments, and bad input."""
import json

import numpy as np
import pytest
import torch

from aevb import evaluation, fitting
from aevb.cli import main
from aevb.experiments.fa import FAHooks
from aevb.models.fa import FactorAnalysis


def fit(tmp_path, *flags) -> tuple[dict, list[dict]]:
    out = tmp_path / "run"
    assert main(["fit", "fa", *flags, "--out", str(out), "--no-progress", "--json"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, history


def test_experiment_1_joint_aevb_reaches_the_exact_em_evidence(tmp_path, capsys):
    summary, history = fit(tmp_path, "--experiment", "1")
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["test_elbo"] == summary["test_elbo"]
    assert len(history) == summary["steps"] == 35 * 32  # one record per gradient step
    last_epoch = [r["train_elbo"] for r in history[-32:]]  # 1000 training examples: 31 batches of 32, then 8
    assert summary["train_elbo"] == pytest.approx((32 * sum(last_epoch[:-1]) + 8 * last_epoch[-1]) / 1000, rel=1e-12)
    assert {"step", "epoch", "phase", "test_elbo", "test_log_evidence"} <= set(history[0])
    assert abs(summary["test_log_evidence"] - summary["mle_log_evidence"]) < 0.04
    assert summary["test_elbo_exact"] <= summary["test_log_evidence"]
    assert summary["test_log_evidence"] - summary["test_elbo_exact"] == pytest.approx(summary["variational_gap"])
    evaluated = fitting.evaluate_run(tmp_path / "run", 0)  # the same quantities under the same names
    assert evaluated["test_elbo"] == summary["test_elbo"] and evaluated["test_elbo_exact"] == summary["test_elbo_exact"]
    assert abs(summary["true_log_evidence"] - summary["mle_log_evidence"]) < 0.05
    assert (tmp_path / "run" / "fa_learning_curve.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "model.pt").exists()


def test_experiment_2_is_two_rounds_of_1000_steps_on_phi_then_1000_on_theta():
    args = fitting.parse_fit_args(FactorAnalysis, ["--experiment", "2"])
    FAHooks(args)
    assert str(args.schedule) == "alternate:1000,1000" and args.steps == 4000


def test_experiment_2_e_phases_tighten_the_bound_and_m_phases_raise_the_evidence(tmp_path):
    summary, history = fit(tmp_path, "--experiment", "2", "--steps", "2000")  # its first round
    assert summary["schedule"] == "alternate:1000,1000" and summary["steps"] == 2000
    for start in (0,):
        e_phase, m_phase = history[start : start + 1000], history[start + 1000 : start + 2000]
        assert {r["phase"] for r in e_phase} == {"e"} and {r["phase"] for r in m_phase} == {"m"}
        assert len({r["test_log_evidence"] for r in e_phase}) == 1  # exactly constant, not "almost"
        # the last 100 steps of the phase, averaged: a constant learning rate leaves the iterate jittering
        # (the gap at single steps ranges 0.002-0.02 nats over seeds 0-2; averaged, 0.0025-0.013 over seeds 0-3;
        # after the M-phase it is 0.86)
        end = e_phase[-100:]
        assert sum(r["test_log_evidence"] - r["test_elbo_exact"] for r in end) / len(end) <= 0.02
        # q's parameters match the exact posterior's (relative errors; they exceed 0.4 after each M-phase)
        for error in ("posterior_mean_error", "posterior_covariance_error"):
            assert sum(r[error] for r in end) / len(end) < 0.1
        assert m_phase[-1]["posterior_mean_error"] > 0.4
        assert m_phase[-1]["test_log_evidence"] > e_phase[-1]["test_log_evidence"] + 0.1
    assert (tmp_path / "run" / "fa_em_phases.png").exists()


def test_user_data_from_a_file(tmp_path):
    # seed 2: the exact-EM reference fit converges in a few hundred iterations (on seed 0's data it ran all 10,000 of
    # fit_em's, over half of this test's time); 30 epochs at --lr 0.03 end 0.01 nats from it, as 100 at 0.01 did
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 2)) @ rng.normal(size=(2, 5)) + 0.3 * rng.normal(size=(400, 5)) + 7.0
    np.save(tmp_path / "x.npy", x)
    summary, _ = fit(tmp_path, "--dataset", str(tmp_path / "x.npy"), "--latent-dim", "2", "--epochs", "30", "--lr",
                     "0.03")
    assert "true_log_evidence" not in summary
    assert abs(summary["test_log_evidence"] - summary["mle_log_evidence"]) < 0.2


def test_bits_per_dim_of_pixels_are_of_the_pixels_not_of_their_standardized_values(tmp_path, capsys):
    """FA standardizes the dequantized pixels u: log p(u) = log p(standardized u) + log_evidence_offset."""
    rng = np.random.default_rng(0)
    pixels = np.clip(128 + 30 * rng.normal(size=(400, 2)) @ rng.normal(size=(2, 6)) + 20 * rng.normal(size=(400, 6)),
                     0, 255).astype(np.uint8)
    np.save(tmp_path / "px.npy", pixels)
    summary, _ = fit(tmp_path, "--dataset", str(tmp_path / "px.npy"), "--transform", "dequantize", "--epochs", "3")
    expected = -(summary["test_log_evidence"] + summary["log_evidence_offset"] - 6 * np.log(256)) / (6 * np.log(2))
    assert summary["bits_per_dim"] == pytest.approx(expected) and 0 < summary["bits_per_dim"] < 8
    assert summary["evidence"] == "log p(u)"  # of the standardized pixels
    assert main(["eval", str(tmp_path / "run"), "--iwae", "2", "--json"]) == 0  # the same, from the rebuilt data
    evaluated = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert evaluated["bits_per_dim"] == pytest.approx(expected)
    assert evaluated["log_evidence_offset"] == summary["log_evidence_offset"] and evaluated["evidence"] == "log p(u)"
    assert main(["sample", str(tmp_path / "run"), "--n", "1000", "--out", str(tmp_path / "s.npy")]) == 0
    drawn, seen = np.load(tmp_path / "s.npy"), (pixels + 0.5) / 256  # the dequantized pixels' scale, not standardized
    assert np.abs(drawn.mean(0) - seen.mean(0)).max() < 0.02 and (drawn.std(0) / seen.std(0)).max() < 4  # not 9


def test_the_synthetic_data_refuse_a_transform(tmp_path, capsys):
    assert main(["fit", "fa", "--transform", "standardize", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert capsys.readouterr().err == ("aevb: error: --transform standardize: the tutorial's synthetic data are fitted "
                                       "as they are; leave out --transform\n")


@pytest.mark.parametrize("columns", [1, 2])
def test_data_of_fewer_than_three_columns_get_their_predictive_checks(tmp_path, columns):
    """The figure's panels at step 5: x1's histogram for one column, x1 against x2 for two (it drew three pairs)."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(100, columns)))
    fit(tmp_path, "--dataset", str(tmp_path / "x.npy"), "--latent-dim", "1", "--steps", "6", "--iwae", "0")
    assert (tmp_path / "run" / "fa_learning_curve.png").stat().st_size > 20_000


BAD_INPUT_CASES = (
    "missing file", "NaNs", "wrong dimensionality", "corrupt file", "latent dim above data dim",
    "latent dim above synthetic dim", "malformed schedule", "unknown flag", "negative epochs", "constant column",
)


def bad_inputs(tmp_path) -> dict[str, list[str]]:
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan, 2.0]] * 10))
    np.save(tmp_path / "flat.npy", np.ones(10))
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).normal(size=(50, 3)))
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    constant = np.random.default_rng(0).normal(size=(50, 3))
    constant[:, 1] = 2.0  # its likelihood is unbounded
    np.save(tmp_path / "constant.npy", constant)
    return {
        "missing file": ["--dataset", str(tmp_path / "missing.npy")],
        "NaNs": ["--dataset", str(tmp_path / "nan.npy")],
        "wrong dimensionality": ["--dataset", str(tmp_path / "flat.npy")],
        "corrupt file": ["--dataset", str(tmp_path / "broken.npz")],
        "latent dim above data dim": ["--dataset", str(tmp_path / "ok.npy"), "--latent-dim", "4"],
        "latent dim above synthetic dim": ["--latent-dim", "5"],
        "malformed schedule": ["--schedule", "alternate:10"],
        "unknown flag": ["--epoch", "3"],
        "negative epochs": ["--epochs", "-1"],
        "constant column": ["--dataset", str(tmp_path / "constant.npy")],
    }


@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_input_gives_one_line_and_exit_code_2_and_writes_nothing(tmp_path, capsys, case):
    out = tmp_path / "runs" / "x"
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(["fit", "fa", *bad_inputs(tmp_path)[case], "--out", str(out), "--no-progress"]))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "error" in stderr, stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_its_standardization_after_another_maps_the_data_as_the_two_in_turn(monkeypatch):
    """Factor analysis standardizes data that --transform standardize gave it: the recorded (m, s) is the composition
    x -> (x - m1) / s1 -> (. - m2) / s2, tested with a first step far from the identity."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=generator) * torch.tensor([5.0, 0.5, 20.0]) + torch.tensor([100.0, -3.0, 7.0])
    m1, s1 = torch.tensor([90.0, -2.0, 0.0]), torch.tensor([2.0, 0.25, 10.0])  # not x's: a second step is not trivial
    first = fitting.Data(((x[:50] - m1) / s1,), ((x[50:] - m1) / s1,), None, (3,), "vectors",
                         standardization=(m1, s1))
    monkeypatch.setattr("aevb.experiments.fa.load_data", lambda args, cls: first)
    data = FAHooks(fitting.parse_fit_args(FactorAnalysis, ["--dataset", "x.npy"])).data()
    mean, std = data.standardization
    assert torch.allclose(data.train[0], (x[:50] - mean) / std, atol=1e-5)
    assert torch.allclose(data.test[0], (x[50:] - mean) / std, atol=1e-5)
    assert torch.allclose(mean, x[:50].mean(0), rtol=1e-5) and torch.allclose(std, x[:50].std(0), rtol=1e-5)
    assert data.log_evidence_offset == pytest.approx(-x[:50].double().std(0).log().sum().item(), rel=1e-6)


def test_refined_bits_per_dim_of_standardized_pixels_count_the_offset_as_the_amortized_ones_do(tmp_path, capsys):
    """FA standardizes dequantized pixels: each bits/dim, of the q_phi and of the q* bound, is of the pixels."""
    pixels = np.random.default_rng(0).integers(0, 17, (300, 3, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    assert main(["fit", "fa", "--dataset", tmp_path / "x.npy", "--transform", "dequantize", "--epochs", "2", "--iwae",
                 "0", "--no-progress", "--out", tmp_path / "run"]) == 0
    capsys.readouterr()
    assert main(["eval", tmp_path / "run", "--iwae", "10", "--refine", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    for bound, bits in [("test_log_evidence", "bits_per_dim"), ("iwae_log_likelihood_refined", "bits_per_dim_refined")]:
        assert summary[bits] == pytest.approx(evaluation.bits_per_dim(summary[bound] + summary["log_evidence_offset"],
                                                                      9, 256))  # uint8: 256 levels
    assert abs(summary["bits_per_dim_refined"] - summary["bits_per_dim"]) < 0.1

