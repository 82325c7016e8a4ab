"""Conditional VAE: a model of p(x | y) for a label y, one-hot y in {0,1}^C (tutorial §5.4).

Generative models (theta), the three of §5.4.1 (``variant``):
    full          z | y ~ N(mu_theta(y), diag(sigma_theta(y)^2)),  x | y, z ~ p_theta(x | y, z)
    prior-only    z | y ~ N(mu_theta(y), diag(sigma_theta(y)^2)),  x | z    ~ p_theta(x | z)
    decoder-only  z     ~ N(0, I_L),                              x | y, z ~ p_theta(x | y, z)
with mu_theta(y) = A y + a and sigma_theta(y) = softplus(B y + b) (linear in the one-hot y) and the
decoder an MLP of [z, y] (or z) -> 500 -> 500 -> D with the likelihood of ``aevb.likelihoods``.
Variational family (phi): q_phi(z | x, y) = N(mu_phi(x, y), diag(sigma_phi(x, y)^2)), an MLP of [x, y].
ELBO(x, y) = E_q[log p(x | y, z)] - KL(q(z | x, y) || p(z | y)); its importance-weighted counterpart
bounds log p(x | y). Labels arrive as integer class indices (the batch's context) and are one-hot
encoded here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent

from aevb.likelihoods import standard_normal
from aevb.model import LatentVariableModel
from aevb.models.vae import Decoder, GaussianEncoder, VAEConfig

Variant = Literal["full", "prior-only", "decoder-only"]
VARIANTS = get_args(Variant)


@dataclass
class CVAEConfig(VAEConfig):
    num_classes: int = 10
    variant: Variant = field(default="full", metadata={
        "help": "full: p(x|y,z) p(z|y); prior-only: p(x|z) p(z|y); decoder-only: p(x|y,z) p(z)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown CVAE variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.num_classes < 2:
            raise ValueError(f"a conditional VAE needs at least 2 classes, got {self.num_classes}")


class CVAE(LatentVariableModel):
    """p_theta(x, z | y) in one of three factorizations; q_phi(z | x, y) diagonal Gaussian."""

    Config = CVAEConfig
    hooks = "aevb.experiments.vae:VAEHooks"

    def __init__(self, config: CVAEConfig = CVAEConfig()) -> None:
        super().__init__(config)
        c = config
        self.label_in_prior = c.variant in ("full", "prior-only")
        self.label_in_decoder = c.variant in ("full", "decoder-only")
        decoder_in = c.latent_dim + (c.num_classes if self.label_in_decoder else 0)
        self.generative = nn.ModuleDict(
            {"decoder": Decoder(decoder_in, c.hidden, c.data_dim, c.likelihood, c.likelihood_scale, c.dropout)}
        )
        if self.label_in_prior:
            # p(z | y) = N(A y + a, diag(softplus(B y + b)^2)): the Gaussian head without hidden layers
            self.generative["prior"] = GaussianEncoder(c.num_classes, (), c.latent_dim, dropout=0.0)
        self.inference = GaussianEncoder(c.data_dim + c.num_classes, c.hidden, c.latent_dim, c.dropout)

    def one_hot(self, y: Tensor) -> Tensor:
        """Integer labels (B,) -> one-hot rows (B, C) in the parameters' dtype."""
        return F.one_hot(y, self.config.num_classes).to(self.inference.loc.weight.dtype)

    def p_z_given_y(self, y_onehot: Tensor) -> Independent:
        """p(z | y), or N(0, I) for ``decoder-only``; batch shape (B,)."""
        if self.label_in_prior:
            return self.generative["prior"](y_onehot)
        return standard_normal(self.config.latent_dim, y_onehot).expand(y_onehot.shape[:-1])

    def p_x_given_yz(self, z: Tensor, y_onehot: Tensor) -> Independent:
        """p(x | y, z) for z (..., B, L) and y (B, C); ``prior-only`` ignores y here."""
        if not self.label_in_decoder:
            return self.generative["decoder"](z)
        y_onehot = y_onehot.expand(*z.shape[:-1], y_onehot.shape[-1])  # (..., B, C): one y per z draw
        return self.generative["decoder"](torch.cat([z, y_onehot], dim=-1))

    def factors(self, x: Tensor, y: Tensor):
        y_onehot = self.one_hot(y)  # (B, C)
        q_z = self.inference(torch.cat([x, y_onehot], dim=-1))
        return q_z, self.p_z_given_y(y_onehot), lambda z: self.p_x_given_yz(z, y_onehot)

    def decode(self, num_samples: int, y: Tensor) -> Independent:
        """p_theta(x | y, z), z ~ p(z | y), for a label y (a scalar) or one per draw (N,); batch shape (N,)."""
        y_onehot = self.one_hot(torch.as_tensor(y, device=self.inference.loc.weight.device).expand(num_samples))
        return self.p_x_given_yz(self.p_z_given_y(y_onehot).sample(), y_onehot)

    def sample(self, num_samples: int, y: Tensor) -> Tensor:
        """x ~ p(x | y), shape (N, D)."""
        return self.decode(num_samples, y).sample()
