"""Training under torch.distributed: 2 processes on gloo, launched by torchrun as a user would, time-boxed.

The script below trains with ``aevb.trainer.Trainer`` from Python on each rank and writes every rank's parameters.
Factor analysis with its closed-form ELBO (no draws of z) makes the two-process step exactly the one-process step
on the same global batch, up to float summation order.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    from torch.distributions import kl_divergence

    from aevb import distributed
    from aevb.elbo import ELBO
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
        torch.manual_seed(1 + distributed.rank())  # each rank its own draws of z and dropout
        theta = [p.detach().clone() for p in model.generative.parameters()]
        records = trainer.fit((x,), steps=3)  # fa: three E-steps
        moved = [not torch.equal(a, p) for a, p in zip(theta, model.generative.parameters())]
        records += trainer.fit((x,), steps=6)
        torch.save({"state": model.state_dict(), "records": records, "theta_moved_in_e_phase": any(moved)},
                   f"{out}-{distributed.rank()}.pt")


    if __name__ == "__main__":
        if len(sys.argv) > 3:
            dist.init_process_group("gloo")
        train(sys.argv[1], sys.argv[2])
''')


def torchrun(tmp_path, kind: str, processes: int) -> list[dict]:
    """Run the script with ``processes`` ranks (1: without torch.distributed); every rank's saved result."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{kind}-{processes}"
    if processes == 1:
        command = [sys.executable, str(script), kind, str(out)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                   "--standalone", str(script), kind, str(out), "distributed"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)  # a hang fails here
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(f"{out}-{rank}.pt", weights_only=False) for rank in range(processes)]


def test_two_ranks_take_the_one_process_step_on_the_global_batch(tmp_path):
    one, = torchrun(tmp_path, "fa", 1)
    first, second = torchrun(tmp_path, "fa", 2)
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name  # the ranks stay identical, bit for bit
        torch.testing.assert_close(value, one["state"][name], rtol=1e-5, atol=1e-6)  # float summation order
    assert not first["theta_moved_in_e_phase"] and not second["theta_moved_in_e_phase"]
    assert [r["phase"] for r in first["records"]] == [r["phase"] for r in one["records"]]
    assert first["records"] == second["records"]  # rank 0's records on every rank
    assert first["records"][-1]["train_elbo"] == pytest.approx(one["records"][-1]["train_elbo"], rel=1e-5)


def test_ranks_with_their_own_draws_stay_identical(tmp_path):
    first, second = torchrun(tmp_path, "vae", 2)
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name
