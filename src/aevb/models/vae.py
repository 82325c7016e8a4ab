"""Variational auto-encoder (tutorial §5.3; Kingma & Welling 2014).

Generative model (theta = decoder MLP, and the Gaussian likelihood's scale if learned):
    z ~ N(0, I_L),    x | z ~ p_theta(x | z) = prod_d ContinuousBernoulli(x_d; lambda_theta(z)_d)
(exact; or torch's clamped one, Bernoulli or Gaussian: ``aevb.likelihoods``), lambda_theta an MLP
z -> 500 -> 500 -> D.
Variational family (phi = encoder MLP):
    q_phi(z | x) = N(mu_phi(x), diag(sigma_phi(x)^2)),  mu linear and sigma softplus-linear in an MLP
    x -> 500 -> 500 of x.
Both MLPs use ReLU and dropout 0.1. The ELBO and the importance-weighted bound come from ``aevb.elbo``
through ``factors``. The blocks here (``mlp``, ``GaussianEncoder``, ``Decoder``) also build the
conditional VAE and later models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent

from aevb.likelihoods import Likelihood, LikelihoodHead, diagonal_normal, standard_normal
from aevb.model import LatentVariableModel


@dataclass
class VAEConfig:
    data_dim: int = 784
    latent_dim: int = field(default=20, metadata={"help": "latent dimension L"})
    hidden: Sequence[int] = field(default=(500, 500), metadata={"help": "hidden layer widths of both MLPs"})
    likelihood: Likelihood = field(
        default="cb", metadata={"help": "p(x|z): cb (continuous Bernoulli), cb-clamped (torch's, the "
                                    "tutorial's: its normalizer clamped in float32), bernoulli or gaussian"})
    likelihood_scale: float | None = field(default=None, metadata={
        "flag": "gaussian-scale", "help": "a fixed sigma for the gaussian likelihood (None: learned per pixel)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout rate of both MLPs"})

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)  # a JSON round trip gives a list
        if self.latent_dim < 1 or self.data_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"dimensions must be positive: data {self.data_dim}, latent {self.latent_dim}, "
                             f"hidden {','.join(map(str, self.hidden))}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.likelihood_scale is not None and self.likelihood != "gaussian":
            raise ValueError(f"a fixed scale (--gaussian-scale) is for the gaussian likelihood, not {self.likelihood}")
        if self.likelihood_scale is not None and not 1e-6 <= self.likelihood_scale <= 1e6:
            raise ValueError(f"the gaussian likelihood's scale must be in [1e-6, 1e6], got {self.likelihood_scale}: "
                             "far beyond, σ² or 1/σ² leaves float32's range")


def dropout_mask_(mask: Tensor, dropped: int) -> None:
    """Fill ``mask`` (contiguous) with a dropout mask: 0 where an element's 16 random bits are among the lowest
    ``dropped`` of their 65536 values (probability dropped / 65536), else 65536 / (65536 - dropped).

    Registered as the operator ``aevb::dropout_mask_``, which ``Dropout`` calls: torch.compile's code calls an
    operator as it is, where inductor's CPU code would build the mask one element at a time (it does not vectorize
    16-bit integers), and, like torch's in-place random fills, it mutates its input, so the compiler never merges
    two draws into one (as it would two calls of a pure operator with equal arguments)."""
    # four 16-bit chunks to each 64-bit draw; to=None: all 2^64 values, without the modulo a bounded range costs
    bits = torch.empty((mask.numel() + 3) // 4, dtype=torch.int64, device=mask.device).random_(-2**63, None)
    torch.ge(bits.view(torch.int16)[:mask.numel()].view(mask.shape), dropped - 32768, out=mask)  # 0 or 1: one kernel
    mask.mul_(65536 / (65536 - dropped))


torch.library.define("aevb::dropout_mask_", "(Tensor(a!) mask, int dropped) -> ()")
torch.library.impl("aevb::dropout_mask_", "cpu", dropout_mask_)
torch.library.register_fake("aevb::dropout_mask_", lambda mask, dropped: None)  # writes its input, returns nothing


class Dropout(nn.Dropout):
    """``nn.Dropout`` (each input zeroed with probability p in training, the others scaled by 1 / (1 - p)), whose
    mask on a CPU comes from 16 random bits per element (``dropout_mask_``), eager or compiled.

    torch's CPU dropout draws one random number per element (``bernoulli_``): on this project's CPU (2 threads) its
    forward and backward on a (100, 500) activation took a median 567 us, these 276 (25 alternating rounds; README,
    Benchmarks). p is rounded to a multiple of 2^-16 (0.1 to 0.100006), and the scale is that of the rounded p, so
    E[output] = input exactly. On other devices, and for p within 2^-17 of 0 or 1, torch's own dropout."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        dropped = round(self.p * 65536)  # of the 65536 values of a 16-bit chunk, drop the lowest ``dropped``
        if x.device.type != "cpu" or not 0 < dropped < 65536:
            return super().forward(x)  # on a GPU torch's (and inductor's) masks are cheap; p within 2^-17 of 0 or 1
        mask = x.new_empty(x.shape)
        torch.ops.aevb.dropout_mask_(mask, dropped)
        return x * mask  # one mask, scaled, for forward and backward


def mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear layers through ``sizes``, each followed by dropout and ReLU: (..., sizes[0]) -> (..., sizes[-1]).

    relu(a m) = relu(a) m for a dropout mask m >= 0: the same numbers as ReLU then dropout, but with dropout first
    the backward reads ReLU's mask from the saved output, where torch.compile's CPU code would store it as a bool
    tensor, a kernel 16 times slower than eager's comparison on this project's CPU (README, Benchmarks)."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), Dropout(dropout), nn.ReLU()]
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """q_phi(z | input) = N(loc, diag(scale^2)): loc = W h, scale = softplus(W' h), h = MLP(input).

    With no hidden layers (h = input) it is also the label prior p_theta(z | y) of the CVAE and the GMVAE."""

    def __init__(self, input_dim: int, hidden: Sequence[int], latent_dim: int, dropout: float) -> None:
        super().__init__()
        sizes = [input_dim, *hidden]
        self.net = mlp(sizes, dropout)
        self.loc = nn.Linear(sizes[-1], latent_dim)
        self.raw_scale = nn.Linear(sizes[-1], latent_dim)

    def forward(self, inputs: Tensor) -> Independent:
        h = self.net(inputs)  # (..., H): (B, H), or (C, B, H) for the GMVAE's q(z|x,y)
        scale = F.softplus(self.raw_scale(h))  # (..., L)
        return diagonal_normal(self.loc(h), scale)


class Decoder(nn.Module):
    """p_theta(x | input): an MLP input -> hidden -> D whose outputs the likelihood head reads."""

    def __init__(self, input_dim: int, hidden: Sequence[int], data_dim: int, likelihood: str,
                 scale: float | None, dropout: float) -> None:
        super().__init__()
        sizes = [input_dim, *hidden]
        self.net = nn.Sequential(mlp(sizes, dropout), nn.Linear(sizes[-1], data_dim))
        self.likelihood = LikelihoodHead(likelihood, data_dim, scale)

    def forward(self, inputs: Tensor) -> Independent:
        return self.likelihood(self.net(inputs))  # batch shape inputs.shape[:-1], event (D,)


class VAE(LatentVariableModel):
    """z ~ N(0, I), x | z ~ p_theta(x | z); q_phi(z | x) diagonal Gaussian."""

    Config = VAEConfig
    hooks = "aevb.experiments.vae:VAEHooks"

    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__(config)
        c = config
        self.generative = Decoder(c.latent_dim, c.hidden, c.data_dim, c.likelihood, c.likelihood_scale, c.dropout)
        self.inference = GaussianEncoder(c.data_dim, c.hidden, c.latent_dim, c.dropout)

    def factors(self, x: Tensor):
        return self.inference(x), standard_normal(self.config.latent_dim, x), self.generative

    def decode(self, num_samples: int) -> Independent:
        """p_theta(x | z) for ``num_samples`` prior draws z ~ N(0, I), batch shape (N,)."""
        p_z = standard_normal(self.config.latent_dim, next(self.parameters()))
        return self.generative(p_z.sample((num_samples,)))

    def sample(self, num_samples: int) -> Tensor:
        return self.decode(num_samples).sample()  # (N, D)
