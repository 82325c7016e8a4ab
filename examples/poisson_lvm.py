"""Poisson latent variable model for count data, e.g. spike counts of D neurons in one time bin.

Generative model (theta = C, b; the observation model of Poisson linear dynamical systems, Macke et al.
2011, "Empirical models of spiking in neural populations", NIPS, without the dynamics):
    z ~ N(0, I_L),    x_d | z ~ Poisson(exp(c_d^T z + b_d)),    d = 1..D,    C = [c_1 ... c_D]^T in R^{D x L}.
The evidence p(x) has no closed form; C is identified up to an orthogonal L x L map acting on z
(a rotation leaves N(0, I) as it is), so what a fit recovers is span(C), the loading subspace.
Variational family (phi = an MLP on log(1 + x), since counts span orders of magnitude):
    q_phi(z | x) = N(mu_phi(x), diag(sigma_phi(x)^2)).
The ELBO, the importance-weighted bound and the code E_q[z | x] come from the base class through ``factors``.

Run as a script, it simulates data from known C and b, fits them, and compares the fitted loading
subspace and the test IWAE bound with the true model's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from scipy.linalg import subspace_angles
from torch import Tensor, nn
from torch.distributions import Independent, Normal, Poisson

from aevb.model import LatentVariableModel
from aevb.trainer import Trainer


@dataclass
class PoissonLVMConfig:
    data_dim: int = field(default=40, metadata={"help": "D, the number of count channels (set from the data)"})
    latent_dim: int = field(default=3, metadata={"help": "L, the dimension of the latent z"})
    hidden: int = field(default=128, metadata={"help": "width of the encoder's two hidden layers"})


def check_counts(x: Tensor) -> None:
    """Raise ValueError unless every entry of x is a non-negative integer, the Poisson's support.

    Called on every batch, because Poisson.log_prob of a non-count is a finite number, not an error: unchecked,
    bad data would train silently (``aevb fit`` tries only a first batch before training). The cost is one
    elementwise pass, small beside the encoder's matrix products; on a GPU it also waits for the device once a step.
    """
    if not torch.all((x >= 0) & (x == x.round())):
        raise ValueError("PoissonLVM needs counts: every entry of the data must be a non-negative integer")


class LogLinearPoisson(nn.Module):
    """p_theta(x | z) = prod_d Poisson(x_d; exp(c_d^T z + b_d)), loading C (D, L) and bias b (D,)."""

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.loading = nn.Parameter(0.1 * torch.randn(data_dim, latent_dim))  # C
        self.bias = nn.Parameter(torch.zeros(data_dim))  # b

    def forward(self, z: Tensor) -> Independent:
        log_rate = z @ self.loading.T + self.bias  # (..., D)
        return Independent(Poisson(log_rate.exp(), validate_args=False), 1, validate_args=False)


class CountEncoder(nn.Module):
    """q_phi(z | x) = N(loc, diag(scale^2)), loc and scale = softplus(.) read from an MLP on log(1 + x)."""

    def __init__(self, data_dim: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(data_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, latent_dim)
        self.raw_scale = nn.Linear(hidden, latent_dim)

    def forward(self, x: Tensor) -> Independent:
        h = self.net(torch.log1p(x))  # (B, H)
        return Independent(Normal(self.loc(h), F.softplus(self.raw_scale(h)), validate_args=False), 1,
                           validate_args=False)


class PoissonLVM(LatentVariableModel):
    """z ~ N(0, I), x | z ~ Poisson(exp(C z + b)); q_phi(z | x) diagonal Gaussian."""

    Config = PoissonLVMConfig

    def __init__(self, config: PoissonLVMConfig = PoissonLVMConfig()) -> None:
        super().__init__(config)
        self.generative = LogLinearPoisson(config.data_dim, config.latent_dim)
        self.inference = CountEncoder(config.data_dim, config.hidden, config.latent_dim)

    def p_z(self) -> Independent:
        """p(z) = N(0, I_L), batch shape ()."""
        zeros = self.generative.bias.new_zeros(self.config.latent_dim)
        return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1, validate_args=False)

    def factors(self, x: Tensor):
        check_counts(x)
        return self.inference(x), self.p_z(), self.generative

    def sample(self, num_samples: int) -> Tensor:
        return self.generative(self.p_z().sample((num_samples,))).sample()  # (N, D)


def simulate(num_examples: int, config: PoissonLVMConfig = PoissonLVMConfig(), seed: int = 0,
             loading_std: float = 0.5) -> tuple[Tensor, PoissonLVM]:
    """(x (N, D) float32 counts, the true model) with C_dl ~ N(0, loading_std^2), b_d ~ U(log 0.5, log 5)
    (baseline rates exp(b_d) log-uniform on [0.5, 5]).

    The true model's q is untrained; fit it with ``Trainer(model, schedule="e-step")`` before using its bound.
    """
    torch.manual_seed(seed)
    model = PoissonLVM(config)
    with torch.no_grad():
        model.generative.loading.normal_(0.0, loading_std)
        model.generative.bias.uniform_(math.log(0.5), math.log(5.0))
        return model.sample(num_examples), model


def largest_principal_angle(a: Tensor, b: Tensor) -> float:
    """The largest principal angle between span(a) and span(b), column spaces in R^D, in degrees."""
    return math.degrees(subspace_angles(a.detach().double().numpy(), b.detach().double().numpy()).max())


def fit(model: PoissonLVM, x: Tensor, schedule: str = "joint", seed: int = 0) -> PoissonLVM:
    """Adam at lr 1e-2 for 30 epochs of batches of 100, then at 1e-3 for 10 more; ``schedule`` says what moves."""
    for lr, epochs in ((1e-2, 30), (1e-3, 10)):
        Trainer(model, schedule, lr=lr, batch_size=100, seed=seed, progress=False).fit((x,), epochs=epochs)
    return model


def main() -> None:
    torch.set_num_threads(1)  # small matrices: more threads only add synchronization
    config = PoissonLVMConfig(data_dim=40, latent_dim=3)
    x, true_model = simulate(6000, config, seed=0)
    x_train, x_test = x[:5000], x[5000:]
    model = fit(PoissonLVM(config), x_train)
    # The true model's bound needs a q too: an E-step (phi only) leaves theta, and so its evidence, fixed.
    fit(true_model, x_train, schedule="e-step")
    angle = largest_principal_angle(true_model.generative.loading, model.generative.loading)
    with torch.no_grad():
        iwae_fit, iwae_true = (m.iwae_bound(x_test, num_samples=1000).mean().item() for m in (model, true_model))
    print(f"largest principal angle between span(C_true) and span(C_fit): {angle:.2f} degrees")
    print(f"test IWAE bound, K = 1000 (nats/example): fit {iwae_fit:.3f}, true {iwae_true:.3f}, "
          f"fit - true {iwae_fit - iwae_true:+.3f}")


if __name__ == "__main__":
    main()
