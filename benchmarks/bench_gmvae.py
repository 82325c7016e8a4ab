"""GMVAE training speed: aevb's marginal estimator against a plain loop written the way the tutorial's code is (§5.5).

The plain loop is the tutorial's: x repeated C times and concatenated with every one-hot y, the whole
q(z|x,y) network run on the C x B rows, a ``DataLoader``, one Adam over everything, and ``.item()`` of every
batch's ELBO. Two changes keep the comparison fair: it uses the same true bound (with log p(y), which the
tutorial leaves out) and builds its distributions with ``validate_args=False`` as aevb does, so the speed-up
measured comes from the structure alone. aevb's GMVAE computes the x part of q(z|x,y)'s first layer once per
example (W [x; y] + b = (W_x x + b) + W_y y) and trains with aevb's ``Trainer`` (in-memory batches on the
device, no host-device synchronization per step; the bench counts them).

Both start from the same parameters; ``check_same_numbers`` shows they compute the same ELBO and the same
gradient norm from the same noise, before anything is timed.

    PYTHONPATH=src python benchmarks/bench_gmvae.py --dataset mnist --data-dir ../shared/data/mnist --device cuda
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent, Normal, OneHotCategorical, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from aevb.data import load_dataset, prepare
from aevb.models.gmvae import GMVAE, GMVAEConfig
from aevb.trainer import Trainer


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


def gradient_norm(module: nn.Module) -> float:
    """|| d(objective) / d(all parameters) ||; unchanged by how the weight matrices are split."""
    return torch.sqrt(sum(p.grad.pow(2).sum() for p in module.parameters() if p.grad is not None)).item()


def check_same_numbers(model: GMVAE, plain: PlainGMVAE, x: Tensor, seed: int) -> dict:
    """Mean ELBO and its gradient norm from both implementations, the same noise (same seed) in each."""
    results = {}
    for name, module, elbo in (("ours", model, lambda: model.elbo(x).elbo.mean()), ("plain", plain, lambda: plain.elbo(x))):
        module.zero_grad()
        torch.manual_seed(seed)
        value = elbo()
        value.backward()
        results[name] = (value.item(), gradient_norm(module))
        module.zero_grad()
    (ours_elbo, ours_grad), (plain_elbo, plain_grad) = results["ours"], results["plain"]
    return {"elbo_ours": ours_elbo, "elbo_plain": plain_elbo, "elbo_abs_diff": abs(ours_elbo - plain_elbo),
            "grad_norm_rel_diff": abs(ours_grad - plain_grad) / plain_grad}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(model: GMVAE, x_train: Tensor, batch_size: int, steps: int, seed: int) -> float:
    device = x_train.device
    synchronize(device)
    start = time.perf_counter()
    Trainer(model, lr=1e-3, batch_size=batch_size, estimator="marginal", seed=seed, progress=False).fit(
        (x_train,), steps=steps)
    synchronize(device)
    return time.perf_counter() - start


def time_plain(plain: PlainGMVAE, x_train: Tensor, batch_size: int, steps: int, device: torch.device) -> float:
    """The tutorial's training loop: DataLoader batches, one Adam over everything, .item() of each ELBO."""
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x_train), batch_size=batch_size, shuffle=True)
    synchronize(device)
    start = time.perf_counter()
    for step, (xb,) in enumerate(loader):
        if step == steps:
            break
        elbo = plain.elbo(xb.to(device))
        opt.zero_grad()
        (-elbo).backward()
        opt.step()
        elbo.item()
    synchronize(device)
    return time.perf_counter() - start


def count_syncs(train: Callable[[int], float], steps: int) -> int:
    """Host-device synchronizations while ``train(steps)`` runs (CUDA's sync-debug warnings, counted)."""
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(steps)
    torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def time_model(args: argparse.Namespace) -> dict:
    """Seconds for one epoch (or ``args.steps`` steps) of training, ours and the plain loop's, same data and start."""
    device = torch.device(args.device)
    x_train, _, _, _ = prepare(load_dataset(args.dataset, args.data_dir, seed=args.seed), "binarize", args.seed)
    torch.manual_seed(args.seed)
    config = GMVAEConfig(data_dim=x_train.shape[1])
    model = GMVAE(config).to(device)
    plain = PlainGMVAE(config.data_dim, config.num_components, config.latent_dim).to(device).copy_from(model)
    numbers = check_same_numbers(model, plain, x_train[: args.batch_size].to(device), args.seed)
    num_batches = -(-len(x_train) // args.batch_size)
    steps = min(args.steps or num_batches, num_batches)
    warmup = 3  # the first steps set up the allocator, the kernels and the optimizers' state: not timed
    time_ours(GMVAE(config).to(device), x_train.to(device), args.batch_size, warmup, args.seed)
    time_plain(PlainGMVAE(config.data_dim, config.num_components, config.latent_dim).to(device), x_train,
               args.batch_size, warmup, device)
    ours = time_ours(model, x_train.to(device), args.batch_size, steps, args.seed)
    plain_seconds = time_plain(plain, x_train, args.batch_size, steps, device)
    if device.type == "cuda":  # a sync makes the CPU wait for the GPU: per-step syncs serialize the two
        numbers["ours_syncs_in_20_steps"] = count_syncs(lambda n: time_ours(model, x_train.to(device), args.batch_size, n, args.seed), 20)
        numbers["plain_syncs_in_20_steps"] = count_syncs(lambda n: time_plain(plain, x_train, args.batch_size, n, device), 20)
    return {"ours_seconds": ours, "plain_seconds": plain_seconds, "ratio": ours / plain_seconds, "steps": steps,
            "batches_per_epoch": num_batches, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            **numbers}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits", help="mnist, digits, idx:DIR or a .npy/.npz of images")
    parser.add_argument("--data-dir", default=None, help="MNIST's folder (for --dataset mnist)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=None, help="time this many steps instead of a whole epoch")
    parser.add_argument("--seed", type=int, default=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    for key, value in time_model(parser.parse_args()).items():
        print(f"{key:<20} {value:.6g}" if isinstance(value, float) else f"{key:<20} {value}")
