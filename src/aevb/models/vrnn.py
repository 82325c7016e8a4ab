"""Variational RNN: one latent per step of a sequence, carried forward by an LSTM (tutorial §5.6).

Generative model (theta = the LSTM, the prior MLP and the decoder MLP), for x_{1:T}, x_t in R^D:
    (h_t, c_t) = LSTM_theta([x_{t-1}, z_{t-1}], (h_{t-1}, c_{t-1})),    h_1 = c_1 = 0
    z_t | h_t      ~ N(mu_theta(h_t), diag sigma_theta(h_t)^2)
    x_t | h_t, z_t ~ prod_d Bernoulli(p_theta(h_t, z_t)_d)      (continuous Bernoulli for data in [0, 1];
                                                                 for real data N(mu_theta(h_t, z_t)_d, s_d^2),
                                                                 s a learned scale per dimension)
Variational family (phi = the posterior MLP; it reads the generative LSTM's h_t, a filtering posterior):
    q(z_{1:T} | x_{1:T}) = prod_t q_phi(z_t | h_t, x_t),    q_phi(z_t | h_t, x_t) = N(mu_phi(h_t, x_t), diag sigma_phi(.)^2)
ELBO, with one trajectory z_{1:T} drawn step by step with ``rsample`` (the tutorial's code used ``sample``,
which cuts the gradient through z_t into q and into the recurrence):
    ELBO(x_{1:T}) = sum_t log p(x_t | h_t, z_t) - KL(q(z_t | h_t, x_t) || p(z_t | h_t)).

Only the LSTM and q depend on the previous step's draw, so only they run step by step. The prior and
the decoder read (h_t, z_t) alone: they run once over all B x T positions after the recurrence. The
x-part of q's first layer is computed for all t at once too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent

from aevb.elbo import ELBO, kl_term
from aevb.likelihoods import LikelihoodHead, diagonal_normal, parameter_image
from aevb.model import LatentVariableModel

Likelihood = Literal["bernoulli", "cb", "gaussian"]
LIKELIHOODS = get_args(Likelihood)


@dataclass
class VRNNConfig:
    data_dim: int = 28  # D, the size of one step x_t (one image row)
    seq_len: int = 28  # T, the length of generated sequences
    latent_dim: int = field(default=2, metadata={"help": "latent dimension L per step"})
    hidden_dim: int = field(default=256, metadata={"flag": "hidden", "help": "LSTM hidden size per layer"})
    mlp_dim: int = field(default=500, metadata={"help": "widths of the prior, decoder and posterior MLPs"})
    likelihood: Likelihood = field(default="bernoulli", metadata={
        "help": "p(x_t | h_t, z_t): bernoulli (binary data), cb (continuous Bernoulli, data in [0, 1]) or gaussian "
                "(real data; a learned scale per dimension)"})


def mlp(in_dim: int, width: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out_dim))


def diagonal_normal_from(output: Tensor) -> Independent:
    """N(loc, diag scale^2) from a network output (..., 2L): loc, then scale through softplus."""
    loc, raw_scale = output.chunk(2, dim=-1)
    return diagonal_normal(loc, F.softplus(raw_scale))


class Transition(nn.Module):
    """(h_t, c_t) = LSTM_theta([x_{t-1}, z_{t-1}], (h_{t-1}, c_{t-1})): two stacked LSTM cells, one step per call.

    Two ``nn.LSTMCell`` run one step of a batch faster than a one-step ``nn.LSTM`` call, whose cuDNN set-up
    dominates so small a step (a VRNN training step on MNIST: 48 against 72 ms on an H100).
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.cells = nn.ModuleList([nn.LSTMCell(data_dim + latent_dim, hidden_dim), nn.LSTMCell(hidden_dim, hidden_dim)])

    def initial_state(self, batch_size: int, like: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(h, c) = 0 for each layer, each (B, H)."""
        zeros = like.new_zeros(batch_size, self.cells[0].hidden_size)
        return [(zeros, zeros)] * len(self.cells)

    def forward(self, x_prev: Tensor, z_prev: Tensor, state: list) -> tuple[Tensor, list]:
        """h_t (B, H) of the top layer, and the new (h, c) of every layer."""
        inputs, new_state = torch.cat([x_prev, z_prev], dim=-1), []
        for cell, h_and_c in zip(self.cells, state):
            h, c = cell(inputs, h_and_c)
            new_state.append((h, c))
            inputs = h
        return h, new_state


class Generative(nn.Module):
    """theta: the recurrence, the prior p(z_t | h_t) and the decoder p(x_t | h_t, z_t)."""

    def __init__(self, config: VRNNConfig) -> None:
        super().__init__()
        self.transition = Transition(config.data_dim, config.latent_dim, config.hidden_dim)
        self.prior = mlp(config.hidden_dim, config.mlp_dim, 2 * config.latent_dim)
        self.decoder = mlp(config.hidden_dim + config.latent_dim, config.mlp_dim, config.data_dim)
        self.likelihood = LikelihoodHead(config.likelihood, config.data_dim)

    def p_z(self, h: Tensor) -> Independent:
        """p(z_t | h_t) for h of shape (..., H): batch shape (...), event (L,)."""
        return diagonal_normal_from(self.prior(h))

    def p_x_given_z(self, h: Tensor, z: Tensor) -> Independent:
        """p(x_t | h_t, z_t) for h (..., H) and z (..., L): batch shape (...), event (D,)."""
        return self.likelihood(self.decoder(torch.cat([h, z], dim=-1)))


class Posterior(nn.Module):
    """phi: q(z_t | h_t, x_t) = N(mu_phi, diag sigma_phi^2), an MLP on [h_t, x_t] with its first layer split."""

    def __init__(self, config: VRNNConfig) -> None:
        super().__init__()
        # W [h; x] + b = W_h h + (W_x x + b): the x-part does not depend on the recurrence.
        self.read_x = nn.Linear(config.data_dim, config.mlp_dim)
        self.read_h = nn.Linear(config.hidden_dim, config.mlp_dim, bias=False)
        self.rest = nn.Sequential(
            nn.ReLU(), nn.Linear(config.mlp_dim, config.mlp_dim), nn.ReLU(), nn.Linear(config.mlp_dim, 2 * config.latent_dim)
        )

    def forward(self, h: Tensor, x_features: Tensor) -> Tensor:
        """q's raw output (B, 2L) from h_t (B, H) and x_features = read_x(x_t) (B, M)."""
        return self.rest(self.read_h(h) + x_features)


class Trajectory(NamedTuple):
    """One pass of the recurrence: h_{1:T} (B, T, H), z_{1:T} (B, T, L), q(z_t | h_t, x_t) with batch (B, T)."""

    h: Tensor
    z: Tensor
    q_z: Independent


class VRNN(LatentVariableModel):
    """Variational RNN on sequences x (B, T, D); the ELBO and importance weights are per sequence."""

    Config = VRNNConfig
    hooks = "aevb.experiments.vrnn:VRNNHooks"

    def __init__(self, config: VRNNConfig = VRNNConfig()) -> None:
        if config.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {config.likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        sizes = {"data": config.data_dim, "steps": config.seq_len, "latent": config.latent_dim,
                 "hidden": config.hidden_dim, "MLP": config.mlp_dim}
        if min(sizes.values()) < 1:
            raise ValueError("dimensions must be positive: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
        super().__init__(config)
        self.generative = Generative(config)
        self.inference = Posterior(config)

    def trajectory(self, x: Tensor, use_mean: bool = False) -> Trajectory:
        """Run the recurrence over x (B, T, D), drawing z_t ~ q(z_t | h_t, x_t) by ``rsample`` (or its mean)."""
        transition = self.generative.transition
        # unbind, not x[:, t]: one backward node for all steps instead of one full-size zero-padded gradient per step
        x_steps = x.unbind(1)  # T of (B, D)
        x_features = self.inference.read_x(x).unbind(1)  # T of (B, M), computed for every step at once
        state = transition.initial_state(len(x), x)
        h = state[-1][0]  # h_1 = 0, (B, H)
        hs, zs, q_outputs = [], [], []
        for t in range(len(x_steps)):
            if t > 0:
                h, state = transition(x_steps[t - 1], z, state)
            q_output = self.inference(h, x_features[t])  # (B, 2L)
            q_z_t = diagonal_normal_from(q_output)
            z = q_z_t.mean if use_mean else q_z_t.rsample()  # (B, L)
            hs.append(h)
            zs.append(z)
            q_outputs.append(q_output)
        return Trajectory(torch.stack(hs, 1), torch.stack(zs, 1), diagonal_normal_from(torch.stack(q_outputs, 1)))

    def elbo(self, x: Tensor, estimator: str = "aevb") -> ELBO:
        """sum_t log p(x_t | h_t, z_t) - KL(q(z_t | h_t, x_t) || p(z_t | h_t)) for x (B, T, D); shapes (B,)."""
        h, z, q_z = self.trajectory(x)
        log_likelihood = self.generative.p_x_given_z(h, z).log_prob(x).sum(-1)  # all B x T positions at once
        kl = kl_term(q_z, self.generative.p_z(h), z, estimator).sum(-1)
        return ELBO(log_likelihood - kl, log_likelihood, kl)

    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        """log p(x_{1:T}, z_{1:T}) - log q(z_{1:T} | x_{1:T}) for K whole trajectories per sequence; (K, B)."""
        x_k = x.repeat(num_samples, 1, 1)  # (K * B, T, D), the K copies of the batch one after another
        h, z, q_z = self.trajectory(x_k)
        log_w = self.generative.p_x_given_z(h, z).log_prob(x_k) + self.generative.p_z(h).log_prob(z) - q_z.log_prob(z)
        return log_w.sum(-1).view(num_samples, len(x))

    @torch.no_grad()
    def generate(self, num_samples: int) -> tuple[Tensor, Tensor]:
        """Ancestral sampling step by step (row by row): x_{1:T} ~ p(x_{1:T}) and, for each step, the
        decoder's parameters (Bernoulli p, continuous-Bernoulli lambda or Gaussian mean) given the sampled past;
        both (N, T, D)."""
        transition, config = self.generative.transition, self.config
        state = transition.initial_state(num_samples, next(self.parameters()))
        h = state[-1][0]  # (N, H)
        xs, parameters = [], []
        for t in range(config.seq_len):
            if t > 0:
                h, state = transition(x, z, state)
            z = self.generative.p_z(h).sample()  # (N, L)
            p_x = self.generative.p_x_given_z(h, z)
            x = p_x.sample()  # (N, D)
            xs.append(x)
            parameters.append(parameter_image(p_x))
        return torch.stack(xs, 1), torch.stack(parameters, 1)

    def sample(self, num_samples: int) -> Tensor:
        return self.generate(num_samples)[0]

    def encode(self, x: Tensor) -> Tensor:
        """The posterior means E_q[z_t], each z_{<t} at its mean, concatenated over t: (B, T * L)."""
        return self.trajectory(x, use_mean=True).z.flatten(1)
