"""Variance of the GMVAE's importance-weighted bound: y summed out exactly against y sampled from q(y|x).

For each test example the bound is drawn ``--repeats`` times (fresh noise each time); the table gives the
mean over examples of the bound's mean and of its standard deviation over the repeats, for

* ``y summed out`` (``GMVAE.iwae_bound``): log sum_y p(y) (1/K) sum_k p(x, z_k|y) / q(z_k|x, y), K draws of z per y;
* ``y sampled`` (the generic bound on the joint weights, ``GMVAE.log_importance_weights``): K draws (y_k, z_k)
  from q(y|x) q(z|x, y), at the same K and at C K draws (the decoder passes the exact sum costs).

The model is first trained ``--train-epochs`` epochs with the marginal estimator. The README's table:

    PYTHONPATH=src python benchmarks/gmvae_iwae_variance.py --dataset digits --train-epochs 30 --examples 100 \
        --repeats 20 --k 1 10
"""
from __future__ import annotations

import argparse
import time

import torch

from aevb.arguments import non_negative_int, positive_int, thread_count
from aevb.data import load_dataset, prepare
from aevb.evaluation import eval_mode
from aevb.model import LatentVariableModel
from aevb.models.gmvae import GMVAE, GMVAEConfig
from aevb.trainer import Trainer


def draws(bound, x: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """(mean bound, mean over examples of the std over repeats, seconds per repeat) of ``bound(x)``, shape (B,)."""
    start = time.perf_counter()
    values = torch.stack([bound(x) for _ in range(repeats)]).double()  # (repeats, B)
    return values.mean().item(), values.std(0).mean().item(), (time.perf_counter() - start) / repeats


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    x_train, _, x_test, _ = prepare(load_dataset(args.dataset, args.data_dir, seed=args.seed), "binarize", args.seed)
    torch.manual_seed(args.seed)
    model = GMVAE(GMVAEConfig(data_dim=x_train.shape[1]))
    if args.train_epochs:
        Trainer(model, lr=1e-3, batch_size=100, seed=args.seed, progress=False).fit((x_train,), epochs=args.train_epochs)
    x, C = x_test[: args.examples], model.config.num_components
    print(f"{args.repeats} repeats on {len(x)} test examples of {args.dataset} after {args.train_epochs} epochs; "
          f"C = {C}; cpu, {args.threads} thread(s)")
    print("| estimator | K | draws of z per example | mean bound | std over repeats (mean over examples) | "
          "seconds per repeat |\n"
          "| --- | --- | --- | --- | --- | --- |")
    torch.manual_seed(args.seed + 1)
    rows = {}  # (estimator, K) -> draws of z per example, bound; each once, in order
    for k in args.k:
        rows.setdefault(("y summed out", k), (C * k, lambda x, k=k: model.iwae_bound(x, num_samples=k)))
        for samples in (k, C * k):
            rows.setdefault(("y sampled from q(y|x)", samples),
                            (samples, lambda x, s=samples: LatentVariableModel.iwae_bound(model, x, num_samples=s)))
    with eval_mode(model):
        for (label, samples), (passes, bound) in rows.items():
            mean, std, seconds = draws(bound, x, args.repeats)
            print(f"| {label} | {samples} | {passes} | {mean:.3f} | {std:.4f} | {seconds:.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (default), mnist, idx:DIR or a .npy/.npz/.csv file")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train-epochs", type=non_negative_int, default=60, help="default 60")
    parser.add_argument("--examples", type=positive_int, default=200, help="test examples (default 200)")
    parser.add_argument("--repeats", type=positive_int, default=50, help="draws of each bound (default 50)")
    parser.add_argument("--k", type=positive_int, nargs="+", default=[1, 10, 100], help="default 1 10 100")
    parser.add_argument("--threads", type=thread_count, default=1, help="default 1")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
