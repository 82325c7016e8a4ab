"""Factor analysis, Experiment 1 with per-step evaluation (§5.2): aevb against a straightforward loop.

Experiment 1 evaluates after every gradient step (estimated test ELBO, exact test log evidence), so its
cost is dominated by per-step overhead, not arithmetic. The straightforward loop is the tutorial's: FA's
parameters in one module, ``torch.distributions`` with their default argument validation, a shuffled
``DataLoader`` over a ``TensorDataset``, one Adam, and ``float()`` of the loss and of every evaluated
metric. Both start from the same parameters and compute the same ELBO from the same noise (checked).
Always on the CPU, with the experiment's settings (batch 32, Adam 1e-2, 35 epochs unless ``--steps``).

    PYTHONPATH=src python benchmarks/bench.py --models fa
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from bench import check_same_numbers, compare, copy_parameters, device_name, time_ours, time_plain

from aevb.models.fa import FactorAnalysis, FAConfig, synthetic_data

LR, BATCH_SIZE, EPOCHS, STEPS_PER_EPOCH = 1e-2, 32, 35, 32  # 1000 training points in batches of 32


class PlainFA(nn.Module):
    """x = W z + noise, q(z|x) = N(V x, C C^T): the parameters in aevb's order (W, noise, V, C)."""

    def __init__(self, data_dim: int = 3, latent_dim: int = 2) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(data_dim, latent_dim))
        self.raw_noise_std = nn.Parameter(torch.zeros(data_dim))
        self.v = nn.Parameter(torch.zeros(latent_dim, data_dim))
        self.raw_scale = nn.Parameter(torch.zeros(latent_dim, latent_dim))

    def elbo(self, x: Tensor) -> Tensor:
        scale_tril = self.raw_scale.tril(-1) + torch.diag(F.softplus(self.raw_scale.diagonal()))
        q_z = MultivariateNormal(x @ self.v.T, scale_tril=scale_tril)
        z = q_z.rsample()
        p_x_given_z = Independent(Normal(z @ self.w.T, F.softplus(self.raw_noise_std)), 1)
        p_z = MultivariateNormal(torch.zeros(self.w.shape[1]), torch.eye(self.w.shape[1]))
        return (p_x_given_z.log_prob(x) - kl_divergence(q_z, p_z)).mean()

    def log_evidence(self, x: Tensor) -> Tensor:
        covariance = self.w @ self.w.T + torch.diag(F.softplus(self.raw_noise_std) ** 2)
        return MultivariateNormal(torch.zeros(len(covariance)), covariance).log_prob(x).mean()


def time_model(args: argparse.Namespace) -> list[dict]:
    """Seconds for Experiment 1 (or ``args.steps`` steps), evaluated after every step, ours and the plain loop's."""
    fa_args = argparse.Namespace(**{**vars(args), "batch_size": BATCH_SIZE, "epochs": EPOCHS})
    _, x_train, x_test = synthetic_data(seed=args.seed)

    def fresh_model() -> FactorAnalysis:
        torch.manual_seed(args.seed)
        return FactorAnalysis(FAConfig())

    def plain_copy() -> PlainFA:
        plain = PlainFA()
        copy_parameters(fresh_model(), plain)
        return plain

    def evaluate(model: FactorAnalysis) -> dict[str, Tensor]:  # Experiment 1's per-step metrics
        return {"test_elbo": model.elbo(x_test).elbo.mean(), "test_log_evidence": model.log_evidence(x_test).mean()}

    def ours(steps: int | None, compiled: bool) -> tuple[float, float, dict]:
        seconds, history, measured = time_ours(fresh_model(), (x_train,), fa_args, LR, steps, compiled,
                                               evaluate=evaluate, eval_every="step")
        return seconds, sum(r["train_elbo"] for r in history[-STEPS_PER_EPOCH:]) / len(history[-STEPS_PER_EPOCH:]), measured

    def plain(steps: int | None) -> tuple[float, float]:
        model = plain_copy()
        seconds, elbos = time_plain(model.elbo, model, (x_train,), fa_args, LR, steps,
                                    evaluate=lambda: (model.elbo(x_test), model.log_evidence(x_test)))
        return seconds, sum(elbos[-STEPS_PER_EPOCH:]) / len(elbos[-STEPS_PER_EPOCH:])

    model, plain_model = fresh_model(), plain_copy()
    same = check_same_numbers((model, lambda: model.elbo(x_test).elbo.mean()), (plain_model, lambda: plain_model.elbo(x_test)),
                              args.seed)
    return [{**row, **same, "device": device_name(torch.device("cpu"))} for row in compare(ours, plain, fa_args)]
