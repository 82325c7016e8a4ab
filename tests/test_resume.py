"""Long runs: a fit killed in the middle of an epoch (SIGKILL) or stopped by SIGINT/SIGTERM, then resumed, ends
with the same parameters, metrics and summary as the uninterrupted fit, bit for bit; diverging fits stop with
one line; the trainer trains more when called again and leaves the global random state to its caller."""
import copy
import importlib.metadata
import itertools
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from aevb import runs
from aevb.cli import main
from aevb.errors import Diverged, UsageError
from aevb.models.gmvae import GMVAE, GMVAEConfig
from aevb.models.vae import VAE, VAEConfig
from aevb.trainer import Trainer

# Runs `aevb ARGV` in a process of its own with one thread, sending itself SIGNAL just before gradient step AT
# (1-based), or with AT = 0 just before the evaluation that follows training.
KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from aevb import evaluation, trainer
from aevb.cli import main
at, name, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
step, evaluate = trainer.Trainer.step, evaluation.evaluate
def step_and_maybe_signal(self, batch, phase):
    if self.step_count + 1 == at:
        os.kill(os.getpid(), getattr(signal, name))
    return step(self, batch, phase)
def signal_and_evaluate(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, name))
    return evaluate(*args, **kwargs)
trainer.Trainer.step = step_and_maybe_signal
if at == 0:
    evaluation.evaluate = signal_and_evaluate
sys.exit(main(argv))
"""

FITS = {  # name -> flags; the digits have 15 training batches of 100 per epoch, FA's synthetic data 32 of 32
    # (a VAE with --latent-dim 2 draws its codes as they are: no t-SNE, which took most of its fit's time)
    "fa-alternate": ["fit", "fa", "--schedule", "alternate:7,5", "--epochs", "2", "--iwae", "4"],
    "vae-dynamic-binarization": ["fit", "vae", "--transform", "dynamic-binarize", "--likelihood", "bernoulli",
                                 "--hidden", "16", "--latent-dim", "2", "--epochs", "2", "--iwae", "4",
                                 "--lr-milestones", "1", "--lr-gamma", "0.5"],  # killed in epoch 2: decayed
    "gmvae-temperature-schedule": ["fit", "gmvae", "--estimator", "gumbel-relaxed", "--temperature-decay", "0.5",
                                   "--discrete-kl-warmup", "2", "--epochs", "2", "--hidden", "16", "--latent-dim", "4"],
    "vrnn": ["fit", "vrnn", "--hidden", "8", "--epochs", "2", "--iwae", "4"],  # and --dataset: see `fits`
}


@pytest.fixture(scope="module")
def fits(tmp_path_factory) -> dict[str, list]:
    """FITS, the VRNN's on the first 600 of the digits from a file: 500 training examples, 5 batches of 100 per
    epoch (on all 1797, its two fits took a third of this module's time)."""
    from sklearn.datasets import load_digits

    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, load_digits().images[:600].astype(np.int64))  # pixels 0..16: 17 levels, binarized as the digits are
    return {**FITS, "vrnn": [*FITS["vrnn"], "--dataset", path]}


def run(python, argv: list, at: int = 0, signal_name: str = "SIGKILL") -> subprocess.CompletedProcess:
    """``python -c KILLER``: in a process of its own, forked from one that has imported torch and aevb already
    (``preloaded_python`` in conftest.py), so that each run does not pay for the imports."""
    return python.run(["-c", KILLER, str(at), signal_name, *map(str, argv), "--no-progress"], timeout=300)


def assert_same_run(a: Path, b: Path) -> None:
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    first, second = (json.loads((run / "summary.json").read_text()) for run in (a, b))
    first.pop("train_seconds"), second.pop("train_seconds")
    assert first == second
    states = [torch.load(run / "model.pt", weights_only=True)["state_dict"] for run in (a, b)]
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    figures = [sorted(p.name for p in run.glob("*.png")) for run in (a, b)]  # FA's drew its samples at step 5 too
    assert figures[0] == figures[1] and all((a / name).read_bytes() == (b / name).read_bytes() for name in figures[0])


def fit(argv: list) -> int:
    """``aevb ARGV`` in this process (one thread, as the killed processes have)."""
    return main([*map(str, argv), "--no-progress"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fits) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("uninterrupted")
    for name, flags in fits.items():
        assert fit([*flags, "--out", out / name]) == 0
    return {name: out / name for name in fits}


@pytest.mark.parametrize("name, at", [("fa-alternate", 45), ("vae-dynamic-binarization", 22),
                                      ("gmvae-temperature-schedule", 23), ("vrnn", 8)])
def test_killed_in_the_middle_of_an_epoch_and_resumed_it_ends_as_the_uninterrupted_fit(name, at, fits, uninterrupted,
                                                                                        tmp_path, preloaded_python):
    killed = run(preloaded_python, [*fits[name], "--out", tmp_path / "run"], at=at)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "run" / runs.MARKER).read_text())["status"] == "incomplete"
    assert runs.load_file(tmp_path / "run" / runs.CHECKPOINT)["trainer"]["step"] < at  # the last epoch's end
    assert fit(["resume", tmp_path / "run"]) == 0
    assert_same_run(uninterrupted[name], tmp_path / "run")


@pytest.mark.parametrize("signal_name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_sigint_and_sigterm_stop_at_a_step_boundary_with_a_checkpoint_to_resume_from(signal_name, code, uninterrupted,
                                                                                    tmp_path, preloaded_python):
    flags = [*FITS["gmvae-temperature-schedule"], "--out", tmp_path / "run"]
    stopped = run(preloaded_python, flags, at=23, signal_name=signal_name)
    assert stopped.returncode == code
    assert stopped.stderr.strip().splitlines() == [
        f"aevb: interrupted by {signal_name} after step 23; the run keeps a checkpoint: continue it with "
        f"aevb resume {tmp_path / 'run'}"]
    trainer_state = runs.load_file(tmp_path / "run" / runs.CHECKPOINT)["trainer"]
    assert (trainer_state["step"], trainer_state["epoch"], trainer_state["position"]) == (23, 2, 8)  # mid-epoch
    assert fit([*flags, "--resume"]) == 0  # aevb fit ... --resume: the same as aevb resume
    assert_same_run(uninterrupted["gmvae-temperature-schedule"], tmp_path / "run")


def test_a_stop_on_the_last_step_of_an_epoch_resumes_into_that_epochs_record(uninterrupted, tmp_path,
                                                                             preloaded_python):
    """The checkpoint then holds the whole epoch's steps but not its record (its evaluation has not run)."""
    flags = [*FITS["gmvae-temperature-schedule"], "--out", tmp_path / "run"]
    assert run(preloaded_python, flags, at=15, signal_name="SIGINT").returncode == 130  # 15 steps an epoch
    trainer_state = runs.load_file(tmp_path / "run" / runs.CHECKPOINT)["trainer"]
    assert (trainer_state["step"], trainer_state["epoch"], trainer_state["position"]) == (15, 1, 15)
    assert fit(["resume", tmp_path / "run"]) == 0
    assert_same_run(uninterrupted["gmvae-temperature-schedule"], tmp_path / "run")


@pytest.mark.parametrize("at, then", [(30, " after step 30; the run keeps a checkpoint: continue it with"),
                                      (0, "; continue the run with")])
def test_sigterm_in_the_last_step_or_after_training_stops_with_one_line_and_resumes(at, then, uninterrupted, tmp_path,
                                                                                   preloaded_python):
    """In the last step (30 of 30) the trainer checkpoints as it ends; in the final evaluation the command stops."""
    flags = [*FITS["gmvae-temperature-schedule"], "--out", tmp_path / "run"]
    stopped = run(preloaded_python, flags, at=at, signal_name="SIGTERM")
    assert stopped.returncode == 143
    assert stopped.stderr.strip().splitlines() == [f"aevb: interrupted by SIGTERM{then} aevb resume {tmp_path / 'run'}"]
    assert runs.status(tmp_path / "run") == "incomplete"
    assert runs.load_file(tmp_path / "run" / runs.CHECKPOINT)["trainer"]["step"] == 30
    assert fit(["resume", tmp_path / "run"]) == 0  # nothing left to train: the evaluation and figures
    assert_same_run(uninterrupted["gmvae-temperature-schedule"], tmp_path / "run")


def test_resume_refuses_other_settings_and_does_not_refit_a_complete_run(tmp_path, capsys, monkeypatch):
    flags = ["fit", "vae", "--hidden", "16", "--latent-dim", "2", "--epochs", "2", "--iwae", "3", "--out", tmp_path / "run",
             "--no-progress"]
    step = Trainer.step

    def stop_at_20(self, batch, phase):  # what the SIGINT handler does, in this process
        if self.step_count + 1 == 20:
            self.request_stop(signal.SIGINT)
        return step(self, batch, phase)

    monkeypatch.setattr(Trainer, "step", stop_at_20)
    assert main([*map(str, flags)]) == 130
    capsys.readouterr()
    monkeypatch.undo()
    assert main([*map(str, flags), "--lr", "0.01", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--lr is 0.01 here but 0.0003 in the run" in err and len(err.strip().splitlines()) == 1
    assert main([*map(str, flags), "--device", "cpu", "--resume"]) == 0  # the device does not change results
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert main([*map(str, flags), "--resume", "--json"]) == 0  # complete: its summary, not fitted again
    assert (tmp_path / "run" / "summary.json").read_text() == summary
    capsys.readouterr()
    assert main([*map(str, flags), "--epochs", "30", "--resume"]) == 2  # nor is it passed off as another fit's
    err = capsys.readouterr().err
    assert "--epochs is 30 here but 2 in the run" in err and len(err.strip().splitlines()) == 1
    assert main(["diagnose", str(tmp_path / "run"), "--examples", "5", "--iwae", "2", "--steps", "2"]) == 0
    assert main([*map(str, flags)]) == 0  # without --resume a complete run of aevb's is replaced, diagnosis and all
    assert main(["eval", str(tmp_path / "run"), "--iwae", "2"]) == 0


def test_a_finished_run_is_marked_complete_before_its_checkpoint_goes(tmp_path, monkeypatch):
    """A kill between the two then leaves a complete run (with a stray checkpoint), never an incomplete one that
    has no checkpoint to resume from."""
    mark = runs.mark
    seen = []

    def checking_mark(out, status, **extra):
        seen.append((status, (out / runs.CHECKPOINT).is_file()))
        mark(out, status, **extra)

    monkeypatch.setattr(runs, "mark", checking_mark)
    assert fit(["fit", "vae", "--hidden", "4", "--latent-dim", "2", "--epochs", "1", "--iwae", "0",
                "--out", tmp_path / "run"]) == 0
    assert seen[-1] == ("complete", True) and not (tmp_path / "run" / runs.CHECKPOINT).exists()
    assert runs.CHECKPOINT not in json.loads((tmp_path / "run" / runs.MARKER).read_text())["files"]


@pytest.mark.parametrize("flags, term", [
    (["fit", "gmvae", "--lr", "100"], "KL term"),
    (["fit", "vae", "--lr", "50", "--likelihood", "gaussian"], "log-likelihood term"),
])
def test_a_diverging_fit_stops_with_one_line_and_writes_nothing_non_finite(flags, term, tmp_path, capsys):
    assert main([*flags, "--hidden", "32", "--epochs", "3", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged" in err[0] and term in err[0] and "--lr" in err[0]
    assert not (tmp_path / "run").exists()  # it diverged before its first checkpoint: nothing is kept


def test_divergence_after_a_checkpoint_keeps_the_last_finite_one(tmp_path, capsys, monkeypatch):
    step = Trainer.step

    def poisoned(self, batch, phase):  # from step 20 on, the decoder's output is NaN
        if self.step_count >= 19:
            batch = (torch.full_like(batch[0], float("nan")),)
        return step(self, batch, phase)

    monkeypatch.setattr(Trainer, "step", poisoned)
    assert main(["fit", "vae", "--hidden", "16", "--epochs", "3", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not finite at step 20 (epoch 2)" in err and "keeps its last finite checkpoint (step 15)" in err
    checkpoint = runs.load_file(tmp_path / "run" / runs.CHECKPOINT)
    assert all(torch.isfinite(p).all() for p in checkpoint["model"]["state_dict"].values())
    assert all(all(isinstance(v, str) or v == v for v in json.loads(line).values())  # no NaN written
               for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())


@pytest.mark.compile
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on a CPU needs a C++ compiler")
def test_a_compiled_fit_resumed_from_its_state_goes_on_as_the_uninterrupted_one():
    """The resumed trainer compiles before its first step, as the uninterrupted one did after its first: the
    compiled Gumbel-softmax ELBO draws otherwise than the eager one, so one eager step would set the fits apart."""
    x = (torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()

    def trainer() -> Trainer:
        torch.manual_seed(0)
        model = GMVAE(GMVAEConfig(data_dim=6, num_components=3, latent_dim=2, hidden=(8,)))
        return Trainer(model, lr=0.01, batch_size=10, estimator="gumbel-relaxed", torch_compile=True, progress=False)

    uninterrupted = trainer()
    uninterrupted.fit((x,), steps=8)
    interrupted = trainer()
    interrupted.fit((x,), steps=5)
    state, parameters = copy.deepcopy(interrupted.state_dict()), copy.deepcopy(interrupted.model.state_dict())
    resumed = trainer()
    resumed.model.load_state_dict(parameters)
    resumed.load_state_dict(state)
    resumed.fit((x,), steps=3)
    for a, b in zip(uninterrupted.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fit_trains_the_asked_for_steps_each_time_and_draws_from_the_callers_random_state():
    """A second call goes on from the first; its draws of z come from the global generator as the caller left it
    (a fit that reseeded it would train alike from any caller's seed)."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,)))
    x = torch.rand(50, 6)
    trainer = Trainer(model, batch_size=10, progress=False)
    trainer.fit((x,), epochs=2)
    assert trainer.step_count == 10
    after_first = copy.deepcopy((model.state_dict(), trainer.state_dict()))

    def second_call(seed: int) -> tuple[list[Tensor], Tensor]:
        model.load_state_dict(after_first[0])
        trainer.load_state_dict(copy.deepcopy(after_first[1]))  # sets the global random state: the caller's comes after
        torch.manual_seed(seed)
        history = trainer.fit((x,), epochs=2)
        assert trainer.step_count == 20 and [r["epoch"] for r in history] == [3, 4]
        return [p.detach().clone() for p in model.parameters()], torch.rand(3)

    (parameters, after), (same_parameters, same_after), (other_parameters, other_after) = map(second_call, (1, 1, 2))
    assert all(map(torch.equal, parameters, same_parameters)) and torch.equal(after, same_after)
    assert not all(map(torch.equal, parameters, other_parameters)) and not torch.equal(after, other_after)


def test_fit_called_again_inside_an_epoch_goes_on_with_it_and_monitoring_does_not_change_the_fit():
    x = torch.rand(50, 6)

    def fitted(*calls, evaluate=None):
        torch.manual_seed(0)
        model = VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,)))
        trainer = Trainer(model, batch_size=10, progress=False, lr_milestones=(1,), lr_gamma=0.5)
        history = [r for steps in calls for r in trainer.fit((x,), steps=steps, evaluate=evaluate)]
        return trainer, history, torch.cat([p.flatten() for p in model.parameters()])

    once, history, parameters = fitted(10)
    for calls in [(5, 5), (3, 3, 4), (1,) * 10]:
        again, split, split_parameters = fitted(*calls)
        assert torch.equal(split_parameters, parameters) and (again.epoch, again.position) == (2, 0), calls
        # a record at each epoch's end (every 5 steps) and at each call's
        assert [r["step"] for r in split] == sorted({5, *itertools.accumulate(calls)}) and split[-1] == history[-1]
    assert [r["epoch"] for r in fitted(3, 3, 4)[1]] == [1, 1, 2, 2]  # steps 3, 5, 6 and 10
    torch.manual_seed(0)
    trainer = Trainer(VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,))), batch_size=10, progress=False)
    trainer.fit((x,), steps=3)
    assert [r["step"] for r in trainer.fit((x,), epochs=2)] == [5, 10]  # the rest of epoch 1 counts as the first
    monitored, records, monitored_parameters = fitted(10, evaluate=lambda m: {"test_elbo": m.elbo(x).elbo.mean()})
    assert torch.equal(monitored_parameters, parameters) and "test_elbo" in records[-1]


def test_an_epochs_record_is_the_mean_over_its_examples_and_keeps_the_models_precision():
    """23 examples in batches of 10, 10 and 3: each step's mean weighs as many examples as its batch holds."""
    x = torch.rand(23, 6, dtype=torch.float64)

    def records(eval_every):
        torch.manual_seed(0)
        model = VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,))).double()
        return Trainer(model, batch_size=10, progress=False).fit((x,), epochs=1, eval_every=eval_every)

    steps, (epoch,) = records("step"), records("epoch")
    for key in ("train_elbo", "train_log_likelihood", "train_kl"):
        by_step = torch.tensor([r[key] for r in steps], dtype=torch.float64)
        assert epoch[key] == pytest.approx(float(by_step @ torch.tensor([10.0, 10, 3], dtype=torch.float64) / 23),
                                           rel=1e-14), key


def test_an_epochs_phase_is_its_steps_or_mixed():
    torch.manual_seed(0)
    model = VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,)))
    x = torch.rand(50, 6)  # 5 steps an epoch
    for schedule, phases in [("alternate:5,5", ["e", "m", "e"]), ("alternate:3,2", ["mixed"] * 3),
                             ("m-step", ["m"] * 3)]:
        records = Trainer(model, schedule, batch_size=10, progress=False).fit((x,), epochs=3)
        assert [r["phase"] for r in records] == phases, schedule


def test_the_learning_rate_decays_after_each_milestone_epoch():
    """lr * gamma^(milestones passed), as torch's MultiStepLR stepped once per epoch gives."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,)))
    x = torch.rand(20, 6)
    trainer = Trainer(model, lr=0.1, batch_size=10, progress=False, lr_milestones=(1, 3), lr_gamma=0.5)
    reference = torch.optim.lr_scheduler.MultiStepLR(torch.optim.SGD([torch.zeros(1)], lr=0.1), [1, 3], gamma=0.5)
    for epoch in range(1, 6):
        trainer.fit((x,), epochs=1)
        assert {o.param_groups[0]["lr"] for o in trainer.optimizers.values()} == {reference.get_last_lr()[0]}, epoch
        reference.optimizer.step()
        reference.step()


def test_no_argument_validation_runs_in_a_training_step_but_the_first(monkeypatch):
    """Validation is switched off for the step, for distributions that ask for it inside (OneHotCategorical's
    Categorical) too: on a GPU every check waits for the device. A trainer's first step is checked, once."""
    from aevb.models.gmvae import GMVAE, GMVAEConfig

    checks = []
    original, init = torch.distributions.Distribution._validate_sample, torch.distributions.Distribution.__init__

    def checking_init(self, *args, **kwargs):  # the checks of a distribution's arguments
        init(self, *args, **kwargs)
        if self._validate_args:
            checks.append(type(self).__name__)

    monkeypatch.setattr(torch.distributions.Distribution, "_validate_sample",
                        lambda self, value: checks.append(type(self).__name__) or original(self, value))
    monkeypatch.setattr(torch.distributions.Distribution, "__init__", checking_init)
    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", True)  # as if the user asked for checks
    torch.manual_seed(0)
    model = GMVAE(GMVAEConfig(data_dim=8, num_components=3, latent_dim=2, hidden=(8, 8)))
    x = (torch.rand(20, 8) > 0.5).float()
    for estimator in ("marginal", "gumbel-relaxed"):
        trainer = Trainer(model, batch_size=10, estimator=estimator, progress=False)
        trainer.fit((x,), steps=1)
        assert checks, estimator  # the first step's
        checks.clear()
        trainer.fit((x,), epochs=2)
        assert checks == []
    assert torch.distributions.Distribution._validate_args  # restored after


def test_the_first_step_finds_a_bad_parameter_as_torch_would():
    """A scale that can go negative: the Normal-Normal KL squares it, so unchecked the fit would go on."""

    class SignedScale(VAE):
        def factors(self, x):
            q_z, p_z, p_x_given_z = super().factors(x)
            loc = q_z.base_dist.loc
            return Independent(Normal(loc, loc), 1), p_z, p_x_given_z

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="scale"):
        Trainer(SignedScale(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,))), progress=False).fit(
            (torch.rand(20, 6),), epochs=1)


def test_the_nonfinite_check_names_the_first_bad_step_from_the_epochs_terms(monkeypatch):
    """The steps' terms stay tensors until the epoch's check: no host-device synchronization per step."""
    torch.manual_seed(0)
    model = VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,)))
    x = torch.rand(40, 6)
    x[25:] = 1e30  # finite, as Trainer.fit checks, but its log-likelihood is not
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None: torch.arange(n))  # the batches in order
    trainer = Trainer(model, batch_size=10, progress=False)
    with pytest.raises(Diverged, match=r"log-likelihood term is not finite at step 3 \(epoch 1\)"):
        trainer.fit((x,), epochs=1)
    assert trainer.position == 4 and trainer.terms.shape == (4, 3)  # the epoch's 4 steps, checked at its end
    assert torch.isfinite(trainer.terms[:2]).all() and not torch.isfinite(trainer.terms[2:]).all(1).any()


def test_data_are_scanned_for_nan_once_while_they_stay_as_they_were(monkeypatch):
    """A step-by-step loop of fit calls scans its data once; a change in place, or other tensors, are scanned."""
    torch.manual_seed(0)
    x = torch.rand(20, 4)
    scanned = []
    isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: scanned.append(t.shape) or isfinite(t))
    trainer = Trainer(VAE(VAEConfig(data_dim=4, hidden=(4,), latent_dim=2)), batch_size=5, progress=False)
    for _ in range(3):
        trainer.fit((x,), steps=1)
    assert scanned.count(x.shape) == 1
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        trainer.fit((x,), steps=1)
    x[3, 1] = 0.5
    trainer.fit((x.clone(),), steps=1)
    assert scanned.count(x.shape) == 3
    with torch.inference_mode():  # no version counter: scanned each time
        made_without_grad = torch.rand(20, 4)
    trainer.fit((made_without_grad,), steps=1)
    trainer.fit((made_without_grad,), steps=1)
    assert scanned.count(x.shape) == 5


def test_trainer_arguments_are_refused_where_they_are_given():
    model = VAE(VAEConfig(data_dim=4, latent_dim=2, hidden=(4,)))
    x = torch.rand(20, 4)
    for kwargs, error, message in [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
        ({"batch_size": 32.0}, TypeError, "batch_size must be a positive integer, got 32.0"),
        ({"lr": -1.0}, ValueError, "lr must be a positive number"), ({"lr": "1e-3"}, TypeError, "lr must be"),
        ({"lr_gamma": 0.0}, ValueError, r"lr_gamma must be a number in \(0, 1\]"),
        ({"clip_grad": -1.0}, ValueError, "clip_grad must be None or a positive number"),  # it would descend
        ({"clip_grad": 0}, ValueError, "clip_grad must be None or a positive number"),  # it would not move
        ({"estimator": "marginal"}, ValueError, "VAE has no estimator 'marginal'; it has aevb, sgvb"),
    ]:
        with pytest.raises(error, match=message):
            Trainer(model, **kwargs)
    Trainer(model, lr=np.float32(1e-3), batch_size=np.int64(5), clip_grad=np.float32(5.0))  # NumPy's numbers are numbers
    shared = VAE(VAEConfig(data_dim=4, latent_dim=2, hidden=(4,)))
    shared.inference.decoder = shared.generative  # an E-step would move theta
    with pytest.raises(ValueError, match=r"generative.net.0.0.weight, .* are in both groups"):
        Trainer(shared)
    model.inference.requires_grad_(False)  # frozen: left as it is, and a schedule of phi alone has nothing to step
    with pytest.raises(ValueError, match=r"e-step steps phi \(model.inference\), and VAE has no trainable"):
        Trainer(model, schedule="e-step")
    frozen = [p.clone() for p in model.inference.parameters()]
    Trainer(model, batch_size=5, progress=False).fit((x,), epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.inference.parameters()))
    trainer = Trainer(model, batch_size=5, progress=False)
    for args, kwargs, error, message in [
        ((x,), {"epochs": 1}, TypeError, "data is a tuple of tensors"),
        (((x,),), {}, TypeError, "epochs or steps, one of them"),
        (((x,),), {"epochs": 1, "steps": 2}, TypeError, "epochs or steps, one of them"),
        (((x,),), {"epochs": -1}, ValueError, "epochs must be a positive integer, got -1"),
        (((x, x[:3]),), {"epochs": 1}, ValueError, r"differ in length: \[20, 3\]"),
        (((x[:0],),), {"steps": 3}, ValueError, "data hold no examples"),
        (((x.reshape(10, 2, 4)[:, :, :2],),), {"epochs": 1}, ValueError,
         r"VAE takes examples of 4 values \(config.data_dim\), and data\[0\] has shape \(10, 2, 2\)"),
        (((torch.cat([x[:19], torch.full((1, 4), float("nan"))]),),), {"epochs": 1}, ValueError, "NaN or infinite"),
        (((x,),), {"epochs": 1, "eval_every": "steps"}, ValueError, "eval_every is 'epoch' or 'step'"),
        (((x,),), {"epochs": 1, "checkpoint_every": (2, "steps")}, ValueError, "checkpoint_every is"),
        (((x,),), {"epochs": 1, "checkpoint_every": 2}, ValueError, "checkpoint_every is"),
    ]:
        with pytest.raises(error, match=message):
            trainer.fit(*args, **kwargs)
    assert trainer.step_count == 0


def interrupted_vae(tmp_path, monkeypatch) -> list[str]:
    """A VAE fit stopped at step 20, in its second epoch (as SIGINT stops it), in tmp_path / 'run'; its flags."""
    flags = ["fit", "vae", "--hidden", "4", "--latent-dim", "2", "--epochs", "2", "--iwae", "0", "--out",
             str(tmp_path / "run"), "--no-progress"]
    step = Trainer.step

    def stop_at_20(self, batch, phase):
        if self.step_count + 1 == 20:
            self.request_stop(signal.SIGINT)
        return step(self, batch, phase)

    monkeypatch.setattr(Trainer, "step", stop_at_20)
    assert main(flags) == 130
    monkeypatch.undo()
    return flags


def test_a_file_put_in_an_interrupted_run_stays_the_users(tmp_path, capsys, monkeypatch):
    """The finished run lists as its own only the files aevb wrote, so a later fit into it refuses to delete the
    user's notes, instead of adopting them on completion and deleting them with the run; a temporary file of a
    killed writer goes."""
    flags = interrupted_vae(tmp_path, monkeypatch)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    (tmp_path / "run" / ".vae_samples.k2j_9x0q.tmp.png").write_bytes(b"")  # a figure's, its writer killed
    (tmp_path / "run" / "latest").symlink_to(tmp_path / "nonesuch")  # a link of the user's, to nothing
    assert main(["resume", str(tmp_path / "run"), "--no-progress"]) == 0
    assert {"notes.txt", "latest"}.isdisjoint(json.loads((tmp_path / "run" / runs.MARKER).read_text())["files"])
    assert not (tmp_path / "run" / ".vae_samples.k2j_9x0q.tmp.png").exists()
    capsys.readouterr()
    assert main(flags) == 2
    assert "holds files aevb did not write (latest, notes.txt)" in capsys.readouterr().err
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_resume_refuses_another_model_and_damaged_records(tmp_path, capsys, monkeypatch):
    flags = interrupted_vae(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main([flags[0], "cvae", *flags[2:], "--resume"]) == 2
    assert "--resume: the model is cvae here but vae in the run" in capsys.readouterr().err
    metrics = tmp_path / "run" / "metrics.jsonl"
    kept = metrics.read_text()
    metrics.write_text("{}\n" * len(kept.splitlines()))  # objects, but no records: no step, no epoch
    assert main(["resume", str(tmp_path / "run")]) == 2
    assert "metrics.jsonl is damaged: it holds 0 whole records" in capsys.readouterr().err
    metrics.write_text(kept)
    assert main(["resume", str(tmp_path / "run"), "--no-progress"]) == 0
    (tmp_path / "run" / "summary.json").write_text("[1]")
    capsys.readouterr()
    assert main([*flags, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "summary.json is damaged (not a JSON object)" in err and len(err.strip().splitlines()) == 1


def test_a_run_has_one_lock_whatever_it_is_called_and_is_not_replaced_through_a_link(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with runs.locked(tmp_path / "a"):
        with pytest.raises(UsageError, match="is being written by another aevb process"):
            with runs.locked(tmp_path / "link"):
                pass
    (tmp_path / "a" / runs.MARKER).write_text(json.dumps({"format": "aevb run", "status": "complete"}))
    with pytest.raises(UsageError, match="link is a link to .*a; aevb does not replace a run through a link"):
        runs.remove_run(tmp_path / "link")
    assert (tmp_path / "a" / runs.MARKER).is_file()


def test_the_tour_removes_no_earlier_run_unless_it_can_remove_all_and_none_is_being_written(tmp_path):
    from aevb import reproduce

    planned = reproduce.plan(["fa-1", "vae"], dataset="digits", budget=reproduce.QUICK_TOUR, diagnosis=None)
    (tmp_path / "fa-1").mkdir()
    (tmp_path / "fa-1" / runs.MARKER).write_text(json.dumps({"format": "aevb run", "status": "complete"}))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "mine.txt").write_text("mine")  # the user's folder, where the tour would fit the VAE
    with pytest.raises(UsageError, match="vae exists and is not an aevb run directory"):
        reproduce.run(planned, tmp_path, progress=False, resume=False)
    (tmp_path / "vae" / "mine.txt").unlink()
    with runs.locked(tmp_path / "fa-1"), pytest.raises(UsageError, match="fa-1 is being written by another aevb"):
        reproduce.run(planned, tmp_path, progress=False, resume=False)
    assert (tmp_path / "fa-1" / runs.MARKER).is_file()  # kept both times
    (tmp_path / "fa-1" / reproduce.PROVENANCE).write_text("{")
    (tmp_path / "fa-1" / "summary.json").write_text("{}")
    with pytest.raises(UsageError, match=r"provenance.json is damaged \(not JSON"):
        reproduce.run(planned, tmp_path, progress=False, resume=True)


def test_a_run_of_an_earlier_aevb_takes_the_default_of_each_flag_added_since(tmp_path, capsys, monkeypatch):
    """An interrupted run whose config.json has no versions (as aevb wrote them before it recorded them), and no
    --lr-gamma (as if the flag had come later), resumes and is read afterwards; one fitted by another aevb with a
    flag this one lacks says so."""
    flags = interrupted_vae(tmp_path, monkeypatch)
    config = tmp_path / "run" / "config.json"
    record = json.loads(config.read_text())
    assert record["versions"]["aevb"] == importlib.metadata.version("aevb")
    assert record["versions"]["torch"] == torch.__version__
    earlier = {k: v for k, v in record.items() if k != "versions"}
    earlier["args"] = {k: v for k, v in record["args"].items() if k != "lr_gamma"}
    config.write_text(json.dumps(earlier))
    capsys.readouterr()
    assert main([*flags, "--lr-gamma", "0.5", "--resume"]) == 2  # compared with the default
    assert "--lr-gamma is 0.5 here but 0.1 in the run" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "warnings" not in json.loads((tmp_path / "run" / "summary.json").read_text())  # no versions to compare
    assert main([*flags, "--resume"]) == 0
    assert main(["eval", str(tmp_path / "run"), "--iwae", "2"]) == 0
    capsys.readouterr()
    later = {**record, "args": {**record["args"], "new_flag": 1}, "versions": {**record["versions"], "aevb": "99.0"}}
    config.write_text(json.dumps(later))
    assert main(["eval", str(tmp_path / "run"), "--iwae", "2"]) == 2
    assert (f"the run was fitted by aevb 99.0, whose flag new_flag this aevb ({importlib.metadata.version('aevb')}) "
            "does not have; read it with aevb 99.0, or fit the run again") in capsys.readouterr().err
    config.write_text(json.dumps({**record, "versions": ["0.1.0"]}))
    assert main(["eval", str(tmp_path / "run"), "--iwae", "2"]) == 2
    assert "config.json is damaged (its versions are not names and version strings)" in capsys.readouterr().err


def test_aevb_says_its_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out == f"aevb {importlib.metadata.version('aevb')}\n"


def test_checkpoints_carry_checksums_whatever_torch_is_told(tmp_path):
    """A user who turns torch.save's CRC-32s off (to save faster) still gets runs aevb can read back."""
    serialization = pytest.importorskip("torch.utils.serialization.config")
    with serialization.patch({"save.compute_crc32": False}):
        assert main(["fit", "vae", "--hidden", "4", "--latent-dim", "2", "--steps", "3", "--iwae", "0", "--out",
                     str(tmp_path / "run"), "--no-progress"]) == 0
        assert main(["eval", str(tmp_path / "run"), "--iwae", "2"]) == 0


def test_a_run_trained_by_another_torch_says_so_however_often_it_was_resumed(tmp_path, capsys, monkeypatch):
    """Fitted with this torch, resumed (say) with torch 2.4.0 and stopped again, then resumed with this one: the
    checkpoint remembers 2.4.0, which config.json, written when the fit began, does not."""
    interrupted_vae(tmp_path, monkeypatch)
    checkpoint = torch.load(tmp_path / "run" / runs.CHECKPOINT, weights_only=True)
    ours = f"aevb {importlib.metadata.version('aevb')}, torch {torch.__version__}"
    assert checkpoint["progress"]["software"] == [ours]
    other = f"aevb {importlib.metadata.version('aevb')}, torch 2.4.0"
    checkpoint["progress"]["software"].append(other)
    torch.save(checkpoint, tmp_path / "run" / runs.CHECKPOINT)
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "run"), "--no-progress"]) == 0
    warning = (f"the run was trained with more than one aevb or torch ({ours}; {other}), so it may not end bit for "
               "bit as an uninterrupted fit would")
    assert f"aevb: warning: {warning}" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["warnings"] == [warning]


def test_one_process_keeps_and_restores_the_random_state_of_every_gpu(monkeypatch):
    """A fit on cuda:1 draws from cuda:1's generator, which is not the current device's: every device's state goes
    into the checkpoint and comes back (stand-ins for two GPUs' states, on a machine without one)."""
    states = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    trainer = Trainer(VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,))), batch_size=10, progress=False)
    state = trainer.state_dict()
    assert state["cuda_rng"] == states
    trainer.load_state_dict(state)
    assert restored == [states]
