"""VAE training speed (§5.3): aevb's ``Trainer`` and ``VAE`` against a plain loop written the tutorial's way.

The plain loop is the tutorial's: separate encoder and decoder ``nn.Module``s returning ``torch.distributions``
objects (a sigmoid layer and ContinuousBernoulli(probs=lambda)), a shuffled ``DataLoader`` over a
``TensorDataset``, one Adam over everything, and ``float()`` of every batch's ELBO. Its distributions are
built with ``validate_args=False`` as aevb's are, so the difference measured is the training loop's
(in-memory batches on the device, no synchronization per step, a fused Adam per parameter group).

Both start from the same parameters; ``check_same_numbers`` shows they compute the same ELBO and gradient
norm from the same noise before anything is timed. ``bench_cvae`` reuses these modules with labels.

    PYTHONPATH=src python benchmarks/bench.py --models vae --data-dir ../shared/data/mnist
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.distributions import ContinuousBernoulli, Independent, Normal, kl_divergence

from bench import compare_models, copy_parameters, load_tensors

from aevb.models.vae import VAE, VAEConfig

LR, HIDDEN, LATENT = 3e-4, 500, 20


class PlainEncoder(nn.Module):
    """q(z | x) = N(mu(x), sigma(x)^2): MLP -> linear mu, softplus-linear sigma."""

    def __init__(self, x_dim: int, z_dim: int, width: int = HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, width), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(width, width), nn.ReLU(), nn.Dropout(0.1))
        self.mu = nn.Linear(width, z_dim)
        self.sigma = nn.Sequential(nn.Linear(width, z_dim), nn.Softplus())

    def forward(self, x: Tensor) -> Independent:
        h = self.net(x)
        return Independent(Normal(self.mu(h), self.sigma(h), validate_args=False), 1, validate_args=False)


class PlainDecoder(nn.Module):
    """p(x | z) = prod ContinuousBernoulli(lambda(z)), lambda an MLP ending in a sigmoid."""

    def __init__(self, z_dim: int, x_dim: int, width: int = HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, width), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(width, width), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(width, x_dim), nn.Sigmoid())

    def forward(self, z: Tensor) -> Independent:
        return Independent(ContinuousBernoulli(probs=self.net(z), validate_args=False), 1, validate_args=False)


def standard_normal(z_dim: int, device: torch.device) -> Independent:
    """p(z) = N(0, I), built afresh every step as the tutorial does."""
    zeros = torch.zeros(z_dim, device=device)
    return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1, validate_args=False)


class PlainVAE(nn.Module):
    def __init__(self, x_dim: int, z_dim: int) -> None:
        super().__init__()
        self.decoder, self.encoder = PlainDecoder(z_dim, x_dim), PlainEncoder(x_dim, z_dim)  # aevb's order: theta, phi
        self.z_dim = z_dim

    def elbo(self, x: Tensor) -> Tensor:
        """Batch mean of log p(x | z) - KL(q(z | x) || N(0, I)), z ~ q(z | x) reparameterized."""
        q_z = self.encoder(x)
        z = q_z.rsample()
        return (self.decoder(z).log_prob(x) - kl_divergence(q_z, standard_normal(self.z_dim, x.device))).mean()


def time_model(args: argparse.Namespace) -> list[dict]:
    """Seconds for ``args.epochs`` epochs (or ``args.steps`` steps), ours and the plain loop's, on MNIST-like data."""
    device = torch.device(args.device)
    (x_train,) = load_tensors(args, "dequantize")
    config = VAEConfig(data_dim=x_train.shape[1], latent_dim=LATENT, hidden=(HIDDEN, HIDDEN))

    def fresh() -> tuple[VAE, PlainVAE]:
        torch.manual_seed(args.seed)
        ours = VAE(config).to(device)
        plain = PlainVAE(config.data_dim, config.latent_dim).to(device)
        copy_parameters(ours, plain)
        return ours, plain

    return compare_models(fresh, (x_train,), args, LR)
