"""GMVAE training speed: aevb's marginal estimator against a plain loop written the way the tutorial's code is (§5.5).

The plain loop is the tutorial's: x repeated C times and concatenated with every one-hot y, the whole
q(z|x,y) network run on the C x B rows, a ``DataLoader``, one Adam over everything, and ``.item()`` of every
batch's ELBO. Two changes keep the comparison fair: it uses the same true bound (with log p(y), which the
tutorial leaves out) and builds its distributions with ``validate_args=False`` as aevb does, so the speed-up
measured comes from the structure alone. aevb's GMVAE computes the x part of q(z|x,y)'s first layer once per
example (W [x; y] + b = (W_x x + b) + W_y y) and trains with aevb's ``Trainer`` (in-memory batches on the
device, no ``.item()`` per step). On CUDA the bench also counts host-device synchronizations in 20 steps of
each loop: every one makes the CPU wait for the GPU's queue to drain.

At batch 100 both loops are bound by per-operation overhead on a GPU (each step launches some hundreds of
small kernels), not by arithmetic, so the C-fold saving in q(z|x,y)'s first layer (about a quarter of the
step's multiply-adds for MNIST) shows mainly on a CPU.

Both start from the same parameters; ``check_same_numbers`` shows they compute the same ELBO and the same
gradient norm from the same noise, before anything is timed.

    PYTHONPATH=src python benchmarks/bench.py --models gmvae --data-dir ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent, Normal, OneHotCategorical, kl_divergence

from bench import compare_models, load_tensors, time_loop

from aevb.models.gmvae import GMVAE, GMVAEConfig

LR = 1e-3


def diagonal_normal(loc: Tensor, raw_scale: Tensor) -> Independent:
    return Independent(Normal(loc, F.softplus(raw_scale), validate_args=False), 1, validate_args=False)


class PlainGMVAE(nn.Module):
    """The tutorial's GMVAE as written there: q(z|x,y) one network on the concatenation [x, y]."""

    def __init__(self, x_dim: int, y_dim: int, z_dim: int, width: int = 512) -> None:
        super().__init__()
        self.y_dim = y_dim
        self.p_z_loc, self.p_z_scale = nn.Linear(y_dim, z_dim), nn.Linear(y_dim, z_dim)
        self.p_x = nn.Sequential(nn.Linear(z_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, x_dim))
        self.q_y = nn.Sequential(nn.Linear(x_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, y_dim))
        self.q_z = nn.Sequential(nn.Linear(x_dim + y_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.q_z_loc, self.q_z_scale = nn.Linear(width, z_dim), nn.Linear(width, z_dim)

    def elbo(self, x: Tensor) -> Tensor:
        """Mean over the batch of sum_y q(y|x) [log p(x|z_y) - KL(q(z|x,y) || p(z|y))] - KL(q(y|x) || p(y))."""
        q_y = OneHotCategorical(logits=self.q_y(x), validate_args=False)
        batch_size = x.size(0)
        ys = torch.eye(self.y_dim, device=x.device)[torch.arange(self.y_dim, device=x.device).repeat_interleave(batch_size)]
        xs = x.repeat(self.y_dim, 1)  # (C * B, D): every example once per component
        h = self.q_z(torch.cat([xs, ys], dim=1))
        q_z = diagonal_normal(self.q_z_loc(h), self.q_z_scale(h))
        zs = q_z.rsample()
        p_x = Independent(Bernoulli(logits=self.p_x(zs), validate_args=False), 1, validate_args=False)
        other = p_x.log_prob(xs) - kl_divergence(q_z, diagonal_normal(self.p_z_loc(ys), self.p_z_scale(ys)))
        other = other.reshape(self.y_dim, batch_size).T  # (B, C)
        return (q_y.probs * other).sum(dim=1).mean() + q_y.entropy().mean() - math.log(self.y_dim)  # -KL(q(y|x) || p(y))

    @torch.no_grad()
    def copy_from(self, model: GMVAE) -> "PlainGMVAE":
        """Take aevb's parameters: the same networks, q(z|x,y)'s first layer reassembled from its two halves."""
        gen, inf = model.generative, model.inference
        self.p_z_loc.load_state_dict(gen.prior.loc.state_dict())
        self.p_z_scale.load_state_dict(gen.prior.raw_scale.state_dict())
        decoder = [m for m in gen.decoder.modules() if isinstance(m, nn.Linear)]
        for plain, ours in zip((self.p_x[0], self.p_x[2], self.p_x[4]), decoder, strict=True):
            plain.load_state_dict(ours.state_dict())
        for plain, ours in zip((self.q_y[0], self.q_y[2], self.q_y[4]),
                               [m for m in inf.logits_y.modules() if isinstance(m, nn.Linear)], strict=True):
            plain.load_state_dict(ours.state_dict())
        self.q_z[0].weight.copy_(torch.cat([inf.z_from_x.weight, inf.z_from_y.weight], dim=1))
        self.q_z[0].bias.copy_(inf.z_from_x.bias)
        self.q_z[2].load_state_dict(inf.z_rest.net[0].state_dict())
        self.q_z_loc.load_state_dict(inf.z_rest.loc.state_dict())
        self.q_z_scale.load_state_dict(inf.z_rest.raw_scale.state_dict())
        return self


def time_model(args: argparse.Namespace) -> list[dict]:
    """Seconds for ``args.epochs`` epochs (or ``args.steps`` steps), ours and the plain loop's, on binarized images."""
    device = torch.device(args.device)
    (x_train,) = load_tensors(args, "binarize")
    config = GMVAEConfig(data_dim=x_train.shape[1])

    def fresh() -> tuple[GMVAE, PlainGMVAE]:
        torch.manual_seed(args.seed)
        ours = GMVAE(config).to(device)
        return ours, PlainGMVAE(config.data_dim, config.num_components, config.latent_dim).to(device).copy_from(ours)

    return compare_models(fresh, (x_train,), args, LR, pyro=lambda steps: time_pyro(fresh()[1], (x_train,), args, steps))


def time_pyro(plain: PlainGMVAE, tensors: tuple[Tensor, ...], args: argparse.Namespace,
              steps: int | None) -> tuple[float, float]:
    """Seconds and mean training ELBO of Pyro's ``SVI`` with ``TraceEnum_ELBO`` on the plain loop's modules: y
    enumerated in parallel in the guide (the exact sum over y of the marginal estimator), z reparameterized, the
    same batches, learning rate and mean over the batch; Pyro's Adam (one per parameter), validation off."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, TraceEnum_ELBO
    from pyro.optim import Adam

    pyro.clear_param_store()
    pyro.enable_validation(False)
    device = next(plain.parameters()).device  # tensors are on the CPU, as the plain loop's DataLoader reads them
    prior = torch.full((plain.y_dim,), -math.log(plain.y_dim), device=device)

    def model(x: Tensor) -> None:
        pyro.module("plain", plain)
        with pyro.plate("data", len(x)), pyro.poutine.scale(scale=1 / len(x)):
            y = pyro.sample("y", dist.OneHotCategorical(logits=prior))
            z = pyro.sample("z", dist.Normal(plain.p_z_loc(y), F.softplus(plain.p_z_scale(y))).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=plain.p_x(z)).to_event(1), obs=x)

    def guide(x: Tensor) -> None:
        pyro.module("plain", plain)
        with pyro.plate("data", len(x)), pyro.poutine.scale(scale=1 / len(x)):
            y = pyro.sample("y", dist.OneHotCategorical(logits=plain.q_y(x)), infer={"enumerate": "parallel"})
            rows = (*y.shape[:-2], len(x), -1)  # y enumerated: (C, 1, C), one value of y for every example
            h = plain.q_z(torch.cat([x.expand(rows), y.expand(rows)], dim=-1))
            pyro.sample("z", dist.Normal(plain.q_z_loc(h), F.softplus(plain.q_z_scale(h))).to_event(1))

    svi = SVI(model, guide, Adam({"lr": LR}), TraceEnum_ELBO(max_plate_nesting=1))
    seconds, losses = time_loop(svi.step, device, tensors, args, steps)
    return seconds, -sum(losses) / len(losses)
