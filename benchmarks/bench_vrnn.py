"""VRNN training speed: aevb's VRNN against a plain loop written the way the tutorial's code is (§5.6).

The plain loop is the tutorial's: one ``nn.LSTM`` call per step, the prior, posterior and decoder MLPs all
inside the loop, a ``DataLoader``, and ``float()`` of every batch's ELBO. Two changes keep the comparison
fair: it draws z_t with ``rsample`` (the tutorial's ``sample()`` computes a different, wrong gradient)
and builds its distributions with ``validate_args=False`` as aevb does, so the speed-up measured comes
from the structure alone. aevb's VRNN runs only the LSTM and q step by step; the prior and the decoder
run once over all B x T positions.

Both start from the same parameters; ``check_same_numbers`` shows they compute the same ELBO and the same
gradient norm from the same noise, before anything is timed.

    PYTHONPATH=src python benchmarks/bench_vrnn.py --dataset mnist --data-dir ../shared/data/mnist --device cuda
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from aevb.experiments.vrnn import load_sequences
from aevb.models.vrnn import VRNN, VRNNConfig, mlp
from aevb.trainer import Trainer


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
        self.f.load_state_dict(model.generative.transition.lstm.state_dict())
        self.p_zt_given_ht.load_state_dict(model.generative.prior.state_dict())
        self.p_xt_given_ht_zt.load_state_dict(model.generative.decoder.state_dict())
        q, first = model.inference, self.q_zt_given_ht_xt[0]
        first.weight.copy_(torch.cat([q.read_h.weight, q.read_x.weight], dim=1))
        first.bias.copy_(q.read_x.bias)
        self.q_zt_given_ht_xt[2].load_state_dict(q.rest[1].state_dict())
        self.q_zt_given_ht_xt[4].load_state_dict(q.rest[3].state_dict())
        return self


def gradient_norm(module: nn.Module) -> float:
    """|| d(objective) / d(all parameters) ||; unchanged by how the weight matrices are split."""
    return torch.sqrt(sum(p.grad.pow(2).sum() for p in module.parameters() if p.grad is not None)).item()


def check_same_numbers(model: VRNN, plain: PlainVRNN, x: Tensor, seed: int) -> dict:
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


def time_ours(model: VRNN, x_train: Tensor, batch_size: int, steps: int, seed: int) -> float:
    device = x_train.device
    synchronize(device)
    start = time.perf_counter()
    Trainer(model, lr=1e-3, batch_size=batch_size, seed=seed, progress=False).fit((x_train,), steps=steps)
    synchronize(device)
    return time.perf_counter() - start


def time_plain(plain: PlainVRNN, x_train: Tensor, batch_size: int, steps: int, device: torch.device) -> float:
    """The tutorial's training loop: DataLoader batches, one Adam over everything, float() of each ELBO."""
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
        float(elbo.detach())
    synchronize(device)
    return time.perf_counter() - start


def time_model(args: argparse.Namespace) -> dict:
    """Seconds for one epoch (or ``args.steps`` steps) of training, ours and the plain loop's, same data and start."""
    device = torch.device(args.device)
    x_train, _, _, likelihood, _ = load_sequences(args.dataset, args.data_dir, args.seed)
    if likelihood != "bernoulli":
        raise ValueError("the benchmark's plain loop has a Bernoulli decoder; use binarized data")
    torch.manual_seed(args.seed)
    config = VRNNConfig(data_dim=x_train.shape[2], seq_len=x_train.shape[1])
    model = VRNN(config).to(device)
    plain = PlainVRNN(config.data_dim, config.latent_dim, config.hidden_dim, config.mlp_dim).to(device).copy_from(model)
    numbers = check_same_numbers(model, plain, x_train[: args.batch_size].to(device), args.seed)
    num_batches = -(-len(x_train) // args.batch_size)
    steps = min(args.steps or num_batches, num_batches)
    warmup = 3  # the first steps set up cuDNN, the allocator and the optimizers' state: not timed
    time_ours(VRNN(config).to(device), x_train.to(device), args.batch_size, warmup, args.seed)
    time_plain(PlainVRNN(config.data_dim, config.latent_dim).to(device), x_train, args.batch_size, warmup, device)
    ours = time_ours(model, x_train.to(device), args.batch_size, steps, args.seed)
    plain_seconds = time_plain(plain, x_train, args.batch_size, steps, device)
    return {"ours_seconds": ours, "plain_seconds": plain_seconds, "ratio": ours / plain_seconds, "steps": steps,
            "batches_per_epoch": num_batches, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            **numbers}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits", help="mnist, digits, or a .npy/.npz of binary sequences")
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
