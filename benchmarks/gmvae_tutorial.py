"""The tutorial's GMVAE training run (§5.5, its notebook and ``04_gmvae/log.txt``), restated to compare its
clustering accuracy with aevb's GMVAE at equal seeds and epochs.

As the tutorial's code does: binarized MNIST (dequantized (x + U(0,1))/256 > 0.5, drawn once from the seed),
batches of 100 in the file's order every epoch (no shuffling), C = 10, latent 64, hidden 512-512, Xavier-normal
weights and zero biases, one ``Adam(model.parameters(), lr=1e-3)`` with default settings, and the marginal
estimator with x repeated C times, loss = -mean ELBO:

    ELBO_i = sum_y q(y|x_i) [log p(x_i|z_y) - KL(q(z|x_i,y) || p(z|y))] + H(q(y|x_i)) - log C,  z_y ~ q(z|x_i,y),

with p(z|y) = N(W y + b, softplus(V y + c)) and p(x|z) = Bernoulli(probs = sigmoid(MLP(z))). Torch builds
Bernoulli(probs) by clamping probs to [eps, 1 - eps] (eps = 2^-23 in float32, ``clamp_probs``) and taking
logits = log p - log(1 - p): every pixel's log-probability is capped below at log eps = -15.9, and a pixel
whose sigmoid rounds past the clamp gets no gradient. After every epoch, on the test set in eval mode without
gradients: H(q(y|x)) averaged over examples, the test ELBO (one draw of z per example and component) with and
without -log C (the tutorial prints the latter), and the Hungarian accuracy and NMI of argmax q(y|x).

Differences from aevb's GMVAE: no shuffling; sigmoid probabilities instead of logits; one Adam over all
parameters; q(z|x,y) one network on the concatenation [x, y] (``PlainGMVAE``), the x part of its first layer
not split off and computed once per example. Distributions skip argument validation (same numbers). The
tutorial trains on the bound without -log C; the constant changes no gradient.

    PYTHONPATH=src python benchmarks/gmvae_tutorial.py --dataset mnist --data-dir ../shared/data/mnist --epochs 20 --seeds 0 1 2 --out gmvae_tutorial.jsonl
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, OneHotCategorical, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from bench_gmvae import PlainGMVAE, diagonal_normal

from aevb.arguments import positive_int, thread_count
from aevb.clustering import cluster_accuracy, nmi
from aevb.data import load_dataset, prepare
from aevb.evaluation import eval_mode
from aevb.models.gmvae import glorot_init

C, LATENT, WIDTH, BATCH_SIZE, LR = 10, 64, 512, 100, 1e-3
EVAL_BATCH_SIZE = 1000  # the test set in chunks: C x 10000 rows at once would take gigabytes


class TutorialGMVAE(PlainGMVAE):
    """``PlainGMVAE`` with the tutorial's initialization and decoder p(x|z) = Bernoulli(probs = sigmoid(MLP(z)))."""

    def __init__(self, x_dim: int) -> None:
        super().__init__(x_dim, C, LATENT, WIDTH)
        glorot_init(self)

    def elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ELBO_i, q(y|x_i)), shapes (B,) and (B, C), for x of shape (B, D); one z per example and component."""
        q_y = OneHotCategorical(logits=self.q_y(x), validate_args=False)
        batch_size = x.size(0)
        ys = torch.eye(C).repeat_interleave(batch_size, dim=0)  # (C * B, C): component y for every example
        xs = x.repeat(C, 1)  # (C * B, D)
        h = self.q_z(torch.cat([xs, ys], dim=1))
        q_z = diagonal_normal(self.q_z_loc(h), self.q_z_scale(h))
        zs = q_z.rsample()  # (C * B, latent)
        p_x = Independent(Bernoulli(probs=torch.sigmoid(self.p_x(zs)), validate_args=False), 1, validate_args=False)
        other = p_x.log_prob(xs) - kl_divergence(q_z, diagonal_normal(self.p_z_loc(ys), self.p_z_scale(ys)))
        other = other.reshape(C, batch_size).T  # (B, C)
        return (q_y.probs * other).sum(dim=1) + q_y.entropy() - math.log(C), q_y.probs


def evaluate(model: TutorialGMVAE, x_test: Tensor, y_test: Tensor) -> dict:
    """Test-set H(q(y|x)), ELBO with and without -log C, and accuracy / NMI of argmax q(y|x)."""
    with eval_mode(model):
        elbos, probs = zip(*(model.elbo_terms(x) for x in x_test.split(EVAL_BATCH_SIZE)))
    elbo, probs = torch.cat(elbos), torch.cat(probs)  # (M,), (M, C)
    entropy = torch.special.entr(probs).sum(dim=1)  # H(q(y|x_i)) = -sum_y q log q, shape (M,)
    clusters = probs.argmax(dim=1).numpy()
    return {"cluster_accuracy": cluster_accuracy(clusters, y_test.numpy(), C, int(y_test.max()) + 1),
            "conditional_entropy": entropy.mean().item(), "test_elbo": elbo.mean().item(),
            "test_elbo_without_log_c": elbo.mean().item() + math.log(C), "nmi": nmi(clusters, y_test.numpy())}


def run_seed(args: argparse.Namespace, seed: int, out) -> dict:
    """Train one model for ``args.epochs`` epochs; write and print a record per epoch; return the last."""
    x_train, _, x_test, y_test = prepare(load_dataset(args.dataset, args.data_dir, seed=seed), "binarize", seed)
    torch.manual_seed(seed)
    model = TutorialGMVAE(x_train.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(x_train), batch_size=BATCH_SIZE, shuffle=False)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        for (x,) in loader:
            loss = -model.elbo_terms(x)[0].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds, start = time.perf_counter() - start, time.perf_counter()
        record = {"seed": seed, "epoch": epoch, **evaluate(model, x_test, y_test),
                  "seconds": seconds, "eval_seconds": time.perf_counter() - start}  # training, evaluation
        print(f"seed {seed} epoch {epoch}: accuracy {record['cluster_accuracy']:.3f}  H {record['conditional_entropy']:.3f}  "
              f"ELBO {record['test_elbo']:.2f} ({record['test_elbo_without_log_c']:.2f} without -log C)  "
              f"NMI {record['nmi']:.3f}  {record['seconds']:.1f} s", flush=True)
        if out:
            out.write(json.dumps(record) + "\n")
            out.flush()
    return record


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    with open(args.out, "a") if args.out else contextlib.nullcontext() as out:
        last = [run_seed(args, seed, out) for seed in args.seeds]
    print(f"\n{args.dataset}, epoch {args.epochs}, seeds {' '.join(map(str, args.seeds))}: median (min to max)\n")
    print("| cluster accuracy | H(q(y\\|x)) | test ELBO | test ELBO without -log C |\n| --- | --- | --- | --- |")
    cells = []
    for key, digits in (("cluster_accuracy", 3), ("conditional_entropy", 3), ("test_elbo", 2), ("test_elbo_without_log_c", 2)):
        values = [r[key] for r in last]
        cells.append(f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})")
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=thread_count, default=1)
    parser.add_argument("--out", default=None, help="JSONL file: one record per epoch and seed, appended")
    main(parser.parse_args())
