"""Conditional VAE training speed (§5.4, ``full``): aevb's ``Trainer`` and ``CVAE`` against the tutorial's way.

The plain loop is ``bench_vae``'s (see there) with labels: one-hot y concatenated to x in the encoder and
to z in the decoder, and the learned prior p(z | y) = N(A y + a, softplus(B y + b)^2); the DataLoader
yields (x, y) pairs.

    PYTHONPATH=src python benchmarks/bench.py --models cvae --data-dir ../shared/data/mnist
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from bench import compare_models, copy_parameters, load_tensors
from bench_vae import HIDDEN, LATENT, LR, PlainDecoder, PlainEncoder

from aevb.models.cvae import CVAE, CVAEConfig


class PlainPrior(nn.Module):
    """p(z | y) = N(mu(y), sigma(y)^2), linear mu and softplus-linear sigma of the one-hot y."""

    def __init__(self, y_dim: int, z_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(y_dim, z_dim)
        self.sigma = nn.Sequential(nn.Linear(y_dim, z_dim), nn.Softplus())

    def forward(self, y: Tensor) -> Independent:
        return Independent(Normal(self.mu(y), self.sigma(y), validate_args=False), 1, validate_args=False)


class PlainCVAE(nn.Module):
    def __init__(self, x_dim: int, y_dim: int, z_dim: int) -> None:
        super().__init__()
        # aevb's order of registration: theta (decoder, prior), then phi
        self.decoder, self.prior = PlainDecoder(z_dim + y_dim, x_dim), PlainPrior(y_dim, z_dim)
        self.encoder = PlainEncoder(x_dim + y_dim, z_dim)
        self.y_dim = y_dim

    def elbo(self, x: Tensor, y: Tensor) -> Tensor:
        """Batch mean of log p(x | y, z) - KL(q(z | x, y) || p(z | y)), z ~ q(z | x, y) reparameterized."""
        y = F.one_hot(y, self.y_dim).float()
        q_z = self.encoder(torch.cat([x, y], dim=1))
        z = q_z.rsample()
        return (self.decoder(torch.cat([z, y], dim=1)).log_prob(x) - kl_divergence(q_z, self.prior(y))).mean()


def time_model(args: argparse.Namespace) -> list[dict]:
    """Seconds for ``args.epochs`` epochs (or ``args.steps`` steps), ours and the plain loop's."""
    device = torch.device(args.device)
    x_train, y_train = load_tensors(args, "dequantize", labels=True)
    num_classes = int(y_train.max()) + 1
    config = CVAEConfig(data_dim=x_train.shape[1], latent_dim=LATENT, hidden=(HIDDEN, HIDDEN), num_classes=num_classes)

    def fresh() -> tuple[CVAE, PlainCVAE]:
        torch.manual_seed(args.seed)
        ours = CVAE(config).to(device)
        plain = PlainCVAE(config.data_dim, num_classes, config.latent_dim).to(device)
        copy_parameters(ours, plain)
        return ours, plain

    return compare_models(fresh, (x_train, y_train), args, LR)
