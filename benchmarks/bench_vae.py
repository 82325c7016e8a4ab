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

from bench import compare_models, copy_parameters, load_tensors, time_loop

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

    return compare_models(fresh, (x_train,), args, LR, pyro=lambda steps: time_pyro(fresh()[1], (x_train,), args, steps))


def time_pyro(plain: PlainVAE, tensors: tuple[Tensor, ...], args: argparse.Namespace,
              steps: int | None) -> tuple[float, float]:
    """Seconds and mean training ELBO of Pyro's ``SVI`` with ``Trace_ELBO`` on the plain loop's modules, batches and
    learning rate (Pyro's Adam, one per parameter), validation off as in the other loops; the batch's ELBO is its
    mean (``scale``), as the others'. Trace_ELBO estimates the KL from the draw of z, as Pyro does."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    pyro.clear_param_store()
    pyro.enable_validation(False)

    def model(x: Tensor) -> None:
        pyro.module("decoder", plain.decoder)
        with pyro.plate("data", len(x)), pyro.poutine.scale(scale=1 / len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(plain.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.ContinuousBernoulli(probs=plain.decoder.net(z)).to_event(1), obs=x)

    def guide(x: Tensor) -> None:
        pyro.module("encoder", plain.encoder)
        with pyro.plate("data", len(x)), pyro.poutine.scale(scale=1 / len(x)):
            q = plain.encoder(x).base_dist
            pyro.sample("z", dist.Normal(q.loc, q.scale).to_event(1))

    svi = SVI(model, guide, Adam({"lr": LR}), Trace_ELBO())
    seconds, losses = time_loop(svi.step, next(plain.parameters()).device, tensors, args, steps)
    return seconds, -sum(losses) / len(losses)
