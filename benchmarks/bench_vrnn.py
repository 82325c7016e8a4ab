"""VRNN training speed (§5.6): aevb's ``VRNN`` and ``Trainer`` against a plain loop written the tutorial's way.

The plain loop is the tutorial's: one ``nn.LSTM`` call per step, the prior, posterior and decoder MLPs all
called inside the time loop, a shuffled ``DataLoader``, one Adam over everything, and ``float()`` of every
batch's ELBO (``bench.time_plain``). Two changes keep the comparison fair: it draws z_t with ``rsample``
(the tutorial's ``sample()`` computes a different, wrong gradient) and builds its distributions with
``validate_args=False`` as aevb does. aevb's VRNN runs only the LSTM cells and q step by step; the prior and
the decoder run once over all B x T positions, and q's x-part for all steps at once.

Both start from the same parameters; ``check_same_numbers`` shows they compute the same ELBO and gradient
norm from the same noise before anything is timed.

    PYTHONPATH=src python benchmarks/bench.py --models vrnn --data-dir ../shared/data/mnist
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from bench import compare_models

from aevb import fitting
from aevb.models.vrnn import VRNN, VRNNConfig, mlp

LR = 1e-3


class PlainVRNN(nn.Module):
    """The tutorial's VRNN as written there: every network called inside the time loop."""

    def __init__(self, x_dim: int, z_dim: int, h_dim: int = 256, width: int = 500) -> None:
        super().__init__()
        self.p_zt_given_ht = mlp(h_dim, width, 2 * z_dim)
        self.p_xt_given_ht_zt = mlp(h_dim + z_dim, width, x_dim)
        self.q_zt_given_ht_xt = mlp(h_dim + x_dim, width, 2 * z_dim)
        self.f = nn.LSTM(x_dim + z_dim, h_dim, batch_first=True, num_layers=2)
        self.h_dim = h_dim

    @staticmethod
    def gaussian(output: Tensor) -> Independent:
        mu, sigma = output.chunk(2, dim=1)
        return Independent(Normal(mu, nn.functional.softplus(sigma), validate_args=False), 1, validate_args=False)

    def elbo(self, x: Tensor) -> Tensor:
        """sum_t mean_batch [log p(x_t | h_t, z_t) - KL(q(z_t | h_t, x_t) || p(z_t | h_t))] for x (B, T, D)."""
        elbo = 0
        for t in range(x.size(1)):
            xt = x[:, t, :]
            if t == 0:
                ht, state_t = torch.zeros(x.size(0), self.h_dim, device=x.device), None
            else:
                ht, state_t = self.f(torch.cat([x_tminus1, z_tminus1], dim=1).unsqueeze(1), state_tminus1)
                ht = ht[:, 0]
            prior_over_zt = self.gaussian(self.p_zt_given_ht(ht))
            posterior_over_zt = self.gaussian(self.q_zt_given_ht_xt(torch.cat([ht, xt], dim=1)))
            kl = kl_divergence(posterior_over_zt, prior_over_zt)
            zt = posterior_over_zt.rsample()
            logits = self.p_xt_given_ht_zt(torch.cat([ht, zt], dim=1))
            rec = Independent(Bernoulli(logits=logits, validate_args=False), 1, validate_args=False).log_prob(xt)
            elbo = elbo + (rec - kl).mean()
            x_tminus1, z_tminus1, state_tminus1 = xt, zt, state_t
        return elbo

    @torch.no_grad()
    def copy_from(self, model: VRNN) -> "PlainVRNN":
        """Take aevb's parameters: the same networks, q's first layer reassembled from its two halves."""
        for layer, cell in enumerate(model.generative.transition.cells):  # the same gates, in the same order
            for name, value in cell.state_dict().items():
                getattr(self.f, f"{name}_l{layer}").copy_(value)
        self.p_zt_given_ht.load_state_dict(model.generative.prior.state_dict())
        self.p_xt_given_ht_zt.load_state_dict(model.generative.decoder.state_dict())
        q, first = model.inference, self.q_zt_given_ht_xt[0]
        first.weight.copy_(torch.cat([q.read_h.weight, q.read_x.weight], dim=1))
        first.bias.copy_(q.read_x.bias)
        self.q_zt_given_ht_xt[2].load_state_dict(q.rest[1].state_dict())
        self.q_zt_given_ht_xt[4].load_state_dict(q.rest[3].state_dict())
        return self


def time_model(args: argparse.Namespace) -> list[dict]:
    """Seconds for ``args.epochs`` epochs (or ``args.steps`` steps), ours and the plain loop's, same data and start."""
    device = torch.device(args.device)
    flags = ["--dataset", args.dataset, "--seed", str(args.seed)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    (x_train,) = fitting.load_data(fitting.parse_fit_args(VRNN, flags), VRNN).train  # binarized rows, Bernoulli
    config = VRNNConfig(data_dim=x_train.shape[2], seq_len=x_train.shape[1])

    def fresh() -> tuple[VRNN, PlainVRNN]:
        torch.manual_seed(args.seed)
        ours = VRNN(config).to(device)
        return ours, PlainVRNN(config.data_dim, config.latent_dim, config.hidden_dim, config.mlp_dim).to(device).copy_from(ours)

    return compare_models(fresh, (x_train,), args, LR)
