"""Training under torch.distributed: 2 processes on gloo, launched by torchrun as a user would, time-boxed.

The script below trains with ``aevb.trainer.Trainer`` from Python on each rank and writes every rank's parameters.
Factor analysis with its closed-form ELBO (no draws of z) makes the two-process step exactly the one-process step
on the same global batch, up to float summation order.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import signal
    import sys
    from pathlib import Path

    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.distributions import kl_divergence

    from aevb import distributed, evaluation
    from aevb.disk import DiskArray, DiskRows, shard_paths
    from aevb.elbo import ELBO
    from aevb.errors import Interrupted
    from aevb.models.fa import FactorAnalysis, FAConfig
    from aevb.models.vae import VAE, VAEConfig
    from aevb.trainer import Trainer


    class ClosedFormFA(FactorAnalysis):
        """FA trained on its exact ELBO: no draws, so the steps are deterministic."""

        def elbo(self, x, estimator="aevb"):
            elbo = self.expected_elbo(x)
            kl = kl_divergence(self.inference(x), self.p_z())
            return ELBO(elbo, elbo + kl, kl)


    def train(kind, out):
        torch.manual_seed(0)
        if kind == "fa":
            model, x = ClosedFormFA(FAConfig(4, 2)), torch.randn(50, 4)
            trainer = Trainer(model, "alternate:3,2", lr=0.05, batch_size=20, progress=False)
        else:
            model, x = VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,), likelihood="gaussian")), torch.randn(50, 6)
            trainer = Trainer(model, "joint", lr=0.01, batch_size=20, progress=False)
        if kind == "vae-on-disk":  # the same rows, left on disk in two shards and read per batch (aevb.disk)
            shards = Path(f"{out}-shards-{distributed.rank()}")  # each rank its own files: none reads one being written
            shards.mkdir(exist_ok=True)
            np.save(shards / "a.npy", x[:20].numpy())
            np.save(shards / "b.npy", x[20:].numpy())
            x = DiskRows(DiskArray(shard_paths(shards)), np.arange(50))
        torch.manual_seed(1 + distributed.rank())  # each rank its own draws of z and dropout
        theta = [p.detach().clone() for p in model.generative.parameters()]
        records = trainer.fit((x,), steps=3)  # fa: three E-steps
        moved = [not torch.equal(a, p) for a, p in zip(theta, model.generative.parameters())]
        records += trainer.fit((x,), steps=6)
        torch.save({"state": model.state_dict(), "records": records, "theta_moved_in_e_phase": any(moved)},
                   f"{out}-{distributed.rank()}.pt")


    def fail_on_rank_1():
        """What every rank raises when rank 1 alone fails (a check of its shard of the data, say)."""
        def check():
            if distributed.rank() == 1:
                raise ValueError("rank 1 cannot model these values")
        try:
            distributed.together(check)
        except Exception as e:
            return type(e).__name__, str(e), getattr(e, "agreed", False)


    def unused_parameter_moves():
        """Whether a parameter the ELBO stopped reading still moves (by Adam's momentum, were its gradient zeros
        rather than none): one process leaves it where it was."""
        torch.manual_seed(0)
        model = ClosedFormFA(FAConfig(4, 2))
        model.generative.shift = torch.nn.Parameter(torch.zeros(4))
        shifted = [True]
        elbo = model.elbo
        model.elbo = lambda x, estimator="aevb": elbo(x - model.generative.shift if shifted[0] else x)
        trainer = Trainer(model, lr=0.05, batch_size=20, progress=False)
        x = torch.randn(50, 4)
        trainer.fit((x,), steps=3)
        shifted[0], before = False, model.generative.shift.detach().clone()
        trainer.fit((x,), steps=3)
        return not torch.equal(before, model.generative.shift)


    def failing_alone_on_rank_1(where):
        """What each rank raises, and after how many steps, when rank 1 alone fails (a model's error on its rows, its
        GPU's memory) in a training step (the third), or in reading its rows of the third batch (a disk's error; here
        the batch's transform's), or in the evaluation after the first epoch (5 steps): in the test ELBO, or in a
        function of the test rows gathered from the ranks."""
        torch.manual_seed(0)
        model = VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,)))
        trainer = Trainer(model, lr=0.01, batch_size=10, progress=False)
        x, elbo = torch.rand(50, 6), model.elbo

        def fails(*batch, **options):
            if distributed.rank() == 1 and trainer.step_count == (2 if where == "step" else 5):
                raise RuntimeError("out of memory (a stand-in)")
            return elbo(*batch, **options)

        def unreadable(batch):
            if distributed.rank() == 1 and trainer.step_count == 2:
                raise OSError("input/output error (a stand-in)")
            return batch

        if where != "read":
            model.elbo = fails
        evaluate = {"step": None, "read": None, "test ELBO": lambda m: {"test_elbo": evaluation.test_elbo(m, (x,))},
                    "gathered rows": lambda m: {"rows": evaluation.rows_over_ranks(
                        lambda rows: m.elbo(rows).elbo, (x,), 10, torch.device("cpu")).sum()}}[where]
        try:
            trainer.fit((x,), steps=7, evaluate=evaluate, transform=unreadable if where == "read" else None)
        except Exception as e:
            return type(e).__name__, str(e), getattr(e, "agreed", False), trainer.step_count


    def signalled_late_on_rank_1():
        """The step at which every rank stops when rank 1 alone is signalled just after step 3's reduction (as a
        signal that lands during the optimizer step is): the next step's, on both, none left waiting for the other."""
        torch.manual_seed(0)
        trainer = Trainer(VAE(VAEConfig(data_dim=6, latent_dim=2, hidden=(8,))), lr=0.01, batch_size=10, progress=False)
        step = trainer.step

        def step_then_signal(batch, phase):
            terms = step(batch, phase)
            if distributed.rank() == 1 and trainer.step_count == 3:
                trainer.request_stop(signal.SIGTERM)  # what aevb fit's signal handler does
            return terms

        trainer.step = step_then_signal
        try:
            trainer.fit((torch.rand(50, 6),), steps=9)
        except Interrupted as e:
            return e.step


    if __name__ == "__main__":
        if len(sys.argv) > 2:
            distributed.init_from_environment()
        for kind in ("fa", "vae", "vae-on-disk"):
            train(kind, f"{sys.argv[1]}-{kind}")
        if len(sys.argv) > 2:
            torch.save(fail_on_rank_1(), f"{sys.argv[1]}-failure-{distributed.rank()}.pt")
            places = ("step", "read", "test ELBO", "gathered rows")
            torch.save({where: failing_alone_on_rank_1(where) for where in places},
                       f"{sys.argv[1]}-failing-alone-{distributed.rank()}.pt")
            one_row = torch.tensor([[3.0, 4.0]])  # fewer rows than ranks: rank 1's shard is empty
            torch.save(evaluation.rows_over_ranks(lambda x: 2 * x, (one_row,), 10, torch.device("cpu")),
                       f"{sys.argv[1]}-one-row-{distributed.rank()}.pt")
            torch.save(signalled_late_on_rank_1(), f"{sys.argv[1]}-stop-{distributed.rank()}.pt")
            torch.save(unused_parameter_moves(), f"{sys.argv[1]}-unused-{distributed.rank()}.pt")
            from aevb.cli import main  # the command line's resume of an interrupted run, on these two processes
            sys.exit(main(["resume", sys.argv[2], "--no-progress", "--json"]))
''')


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict:
    """One torchrun launch of the script on 2 processes (a launch costs seconds): it trains FA and a VAE from
    Python, checks an error on rank 1 alone, and resumes with ``aevb resume`` an FA fit interrupted here, in one
    process. The one-process runs of the script's training are made here too."""
    from aevb.cli import main
    from aevb.trainer import Trainer

    folder = tmp_path_factory.mktemp("distributed")
    script = folder / "train.py"
    script.write_text(SCRIPT)
    step = Trainer.step

    def stop_in_epoch_2(self, batch, phase):  # what the SIGINT handler does, in this one process
        if self.step_count + 1 == 40:
            self.request_stop(signal.SIGINT)
        return step(self, batch, phase)

    Trainer.step = stop_in_epoch_2
    try:
        assert main(["fit", "fa", "--epochs", "2", "--iwae", "0", "--no-progress", "--out", folder / "run"]) == 130
    finally:
        Trainer.step = step
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               "--monitor-interval", "0.1", str(script), str(folder / "2"), str(folder / "run")]
    launch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder)
    try:
        stdout, stderr = launch.communicate(timeout=240)  # a hang fails here
    except subprocess.TimeoutExpired:
        launch.terminate()  # torchrun ends its workers (each in a session of its own) on SIGTERM
        launch.communicate(timeout=60)
        raise
    done = subprocess.CompletedProcess(command, launch.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    script_functions = {}
    exec(SCRIPT, script_functions)  # the one-process runs, in this process: no process group
    results = {"done": done, "run": folder / "run"}
    for kind in ("fa", "vae", "vae-on-disk"):
        with torch.random.fork_rng():
            script_functions["train"](kind, f"{folder / '1'}-{kind}")
        results[kind, 1] = [torch.load(f"{folder / '1'}-{kind}-0.pt")]
        results[kind, 2] = [torch.load(f"{folder / '2'}-{kind}-{rank}.pt") for rank in range(2)]
    results["failures"] = [torch.load(f"{folder / '2'}-failure-{rank}.pt") for rank in range(2)]
    results["failing alone"] = [torch.load(f"{folder / '2'}-failing-alone-{rank}.pt") for rank in range(2)]
    results["one row"] = [torch.load(f"{folder / '2'}-one-row-{rank}.pt") for rank in range(2)]
    results["stops"] = [torch.load(f"{folder / '2'}-stop-{rank}.pt") for rank in range(2)]
    results["unused moves"] = [torch.load(f"{folder / '2'}-unused-{rank}.pt") for rank in range(2)]
    results["unused moves", 1] = script_functions["unused_parameter_moves"]()
    return results


def test_two_ranks_take_the_one_process_step_on_the_global_batch(launched):
    (one,), (first, second) = launched["fa", 1], launched["fa", 2]
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name  # the ranks stay identical, bit for bit
        torch.testing.assert_close(value, one["state"][name], rtol=1e-5, atol=1e-6)  # float summation order
    assert not first["theta_moved_in_e_phase"] and not second["theta_moved_in_e_phase"]
    assert [r["phase"] for r in first["records"]] == [r["phase"] for r in one["records"]]
    assert first["records"] == second["records"]  # rank 0's records on every rank
    assert first["records"][-1]["train_elbo"] == pytest.approx(one["records"][-1]["train_elbo"], rel=1e-5)


def test_ranks_with_their_own_draws_stay_identical(launched):
    first, second = launched["vae", 2]
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name


def test_rows_left_on_disk_train_as_the_same_rows_in_memory(launched):
    """Each rank reads its slice of every batch from the shards: the steps are those of the tensor, bit for bit."""
    for processes in (1, 2):
        for in_memory, on_disk in zip(launched["vae", processes], launched["vae-on-disk", processes]):
            for name, value in in_memory["state"].items():
                assert torch.equal(value, on_disk["state"][name]), name


# The command line under torchrun ----------------------------------------------------------------------------------
TINY_VAE = ["vae", "--hidden", "8", "--latent-dim", "2", "--batch-size", "20", "--iwae", "5", "--no-progress"]


def test_torchrun_resumes_a_fit_on_another_number_of_processes(launched):
    done, run = launched["done"], launched["run"]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # printed once, by rank 0
    assert done.stdout.count('"model": "fa"') == 1 and summary["processes"] == 2 and summary["epochs"] == 2
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, summary["steps"] + 1))  # one record per step, none lost
    assert json.loads((run / "aevb-run.json").read_text())["status"] == "complete"
    assert "aevb: error" not in done.stderr and "Traceback" not in done.stderr


def test_a_signal_on_one_rank_after_a_steps_reduction_stops_every_rank_after_the_next(launched):
    assert launched["stops"] == [4, 4]  # before, rank 1 stopped after step 3 and rank 0 waited in step 4 until killed


def test_a_parameter_no_rank_used_is_left_where_it_was_as_by_one_process(launched):
    assert launched["unused moves", 1] is False and launched["unused moves"] == [False, False]


def test_a_rank_that_fails_ends_every_rank_with_its_error(launched):
    """No rank goes on to wait for the other: both raise, rank 0 with rank 1's message, marked for rank 0 to report
    alone (the command line prints it once: the test below)."""
    assert launched["failures"] == [("OtherRankFailed", "rank 1: ValueError: rank 1 cannot model these values", True),
                                    ("ValueError", "rank 1 cannot model these values", True)]


def test_rows_fewer_than_the_ranks_are_gathered_whole_on_every_rank(launched):
    """The GMVAE's q(y|x) over a test set of fewer rows than processes: the empty shard adds nothing."""
    assert [rows.tolist() for rows in launched["one row"]] == [[[6.0, 8.0]], [[6.0, 8.0]]]


@pytest.mark.parametrize("where, step, error", [("step", 2, "RuntimeError: out of memory (a stand-in)"),
                                                ("read", 2, "OSError: input/output error (a stand-in)"),
                                                ("test ELBO", 5, "RuntimeError: out of memory (a stand-in)"),
                                                ("gathered rows", 5, "RuntimeError: out of memory (a stand-in)")])
def test_an_error_of_one_rank_in_a_step_or_an_evaluation_ends_every_rank(launched, where, step, error):
    """Rank 1 alone fails where the other waits for it in a collective (the step's reduction, the evaluation's): it
    raises its error, rank 0 names it (before, with gloo, rank 0 raised gloo's "Connection closed by peer" once rank
    1's process had ended)."""
    kind, message = error.split(": ", 1)
    assert [ranks[where] for ranks in launched["failing alone"]] == [
        ("OtherRankFailed", f"rank 1: {error}", True, step), (kind, message, True, step)]


def test_what_several_processes_cannot_run_is_one_line(tmp_path, monkeypatch, capsys):
    """Decided before any process group exists (from the environment torchrun sets) or from its size alone."""
    from aevb import distributed
    from aevb.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["eval", "run"]) == 2
    assert capsys.readouterr().err == ""  # every rank refuses alike: rank 0 alone says so
    monkeypatch.setenv("RANK", "0")
    assert main(["eval", "run"]) == 2
    assert "aevb eval runs in one process" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert main(["fit", *TINY_VAE, "--batch-size", "5", "--epochs", "1", "--out", "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size 5 is the global batch and must divide among the 2 processes" in err[0]
    assert not (tmp_path / "run").exists()


def test_torchrun_with_one_process_runs_the_collectives_and_trains_as_one_process(tmp_path, monkeypatch):
    """``torchrun --nproc-per-node 1`` joins a process group of one (on a GPU, the NCCL path of several GPUs): each
    step's gradients go through all_reduce, and the fit equals the fit without torchrun up to float rounding."""
    import socket

    import torch.distributed as dist

    from aevb.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["fit", *TINY_VAE, "--epochs", "1", "--json"]
    assert main([*argv, "--out", tmp_path / "alone"]) == 0
    reduced = []
    all_reduce = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *a, **k: reduced.append(tensor.numel()) or all_reduce(tensor, *a, **k))
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    assert main([*argv, "--out", tmp_path / "torchrun"]) == 0
    assert not dist.is_initialized()  # left when the command ended
    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text()) for name in ("alone", "torchrun")}
    steps = summaries["alone"]["steps"]
    assert summaries["torchrun"]["processes"] == 1 and "processes" not in summaries["alone"]
    assert len(reduced) >= steps  # a gradient all_reduce per step, and the evaluation's
    assert summaries["torchrun"]["test_elbo"] == pytest.approx(summaries["alone"]["test_elbo"], rel=1e-4)
