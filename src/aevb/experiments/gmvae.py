"""``aevb fit gmvae``: the tutorial's Gaussian-mixture VAE (§5.5), clustering binarized images.

Defaults are the tutorial's (C = 10 components, latent 64, hidden 512-512, batch 100, Adam 1e-3, the exact
marginal estimator) on scikit-learn's digits, which ship with the project; full MNIST with ``--dataset mnist
--data-dir DIR``. Every epoch it evaluates, on the test set, the ELBO (the marginal estimator, whatever trained
the model, including the -log C the tutorial's printed values leave out), the conditional entropy H(q(y|x))
and the Hungarian-matched clustering accuracy (metrics.jsonl, and their curves: the tutorial's Figure 10).
The summary adds NMI and the cluster proportions; a figure shows generations per cluster, one row per cluster,
rows ordered by the label each cluster is matched to.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical

from aevb import clustering, plotting
from aevb.evaluation import eval_mode, in_batches, iwae_log_likelihood, run_data, test_elbo
from aevb.experiments.arguments import add_dataset_arguments, add_training_arguments, positive_float, positive_int
from aevb.experiments.vae import hidden_sizes, test_set  # noqa: F401 (test_set: the run's test data, for aevb eval)
from aevb.models.gmvae import ESTIMATORS, GMVAE, VARIANTS, GMVAEConfig, TemperatureSchedule
from aevb.runs import UsageError, append_jsonl, default_device, device_name, save_run
from aevb.trainer import Trainer

MODELS = ("gmvae",)
GENERATIONS_PER_CLUSTER = 10


def at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a mixture needs at least 2 components, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    add_dataset_arguments(parser)
    parser.add_argument("--transform", choices=("binarize", "none"), default="binarize",
                        help="binarize: dequantized pixels > 0.5 (the tutorial's); none: data already 0/1 (default binarize)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="marginal",
                        help="marginal: exact sum over y; gumbel-relaxed: Concrete sample and densities; "
                             "gumbel-analytic: Concrete sample, analytic KL of y (default marginal)")
    parser.add_argument("--temperature", type=positive_float, default=0.5,
                        help="Gumbel-softmax temperature tau, the first epoch's under a decay (default 0.5)")
    parser.add_argument("--temperature-decay", type=decay_factor, default=1.0,
                        help="multiply tau by this after every epoch, in (0, 1]; 1 keeps it constant (default 1)")
    parser.add_argument("--temperature-min", type=positive_float, default=0.1,
                        help="the floor a decaying tau stops at (default 0.1)")
    parser.add_argument("--straight-through", action="store_true",
                        help="Gumbel estimators: one-hot argmax forward, relaxed gradient backward")
    parser.add_argument("--components", type=at_least_two, default=10, help="number of clusters C (default 10)")
    parser.add_argument("--latent-dim", type=positive_int, default=64, help="latent dimension (default 64)")
    parser.add_argument("--hidden", type=hidden_sizes, default=(512, 512), help="hidden layer widths (default 512,512)")
    parser.add_argument("--variant", choices=VARIANTS, default="gmm",
                        help="gmm: p(x|z) p(z|y) p(y); m2: p(x|y,z) p(z) p(y) (default gmm)")
    parser.add_argument("--iwae", type=int, default=0,
                        help="importance samples K for an IWAE bound on the test log-likelihood; 0 skips it (default 0)")
    add_training_arguments(parser, epochs=20, batch_size=100, lr=1e-3)


def decay_factor(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def cluster_metrics(model: GMVAE, x: Tensor, labels: Tensor | None, num_labels: int | None) -> dict:
    """Test-set clustering: mean H(q(y|x)), the argmax clusters, and (with labels) accuracy, NMI, matching."""
    with eval_mode(model) as device:
        probs = torch.cat([model.cluster_probs(batch) for batch, in in_batches((x,), 1000, device)])  # (M, C)
    entropy = Categorical(probs=probs).entropy().mean().item()
    clusters = probs.argmax(1).cpu().numpy()
    c = model.config.num_components
    metrics = {"conditional_entropy": entropy, "clusters": clusters,
               "cluster_proportions": clustering.cluster_proportions(clusters, c)}
    if labels is not None:
        labels = labels.numpy()
        metrics.update(cluster_accuracy=clustering.cluster_accuracy(clusters, labels, c, num_labels),
                       nmi=clustering.nmi(clusters, labels),
                       matched_labels=clustering.match_clusters(clusters, labels, c, num_labels))
    return metrics


def run(args, run_dir: Path, progress: bool) -> dict:
    if args.estimator == "marginal" and args.straight_through:
        raise UsageError("--straight-through is for the Gumbel estimators; add --estimator gumbel-relaxed or gumbel-analytic")
    if args.iwae < 0:
        raise UsageError(f"--iwae must be 0 (skip) or a positive number of importance samples, got {args.iwae}")
    config = {
        "model": "gmvae", "dataset": args.dataset, "data_dir": args.data_dir, "likelihood": "bernoulli",
        "transform": args.transform, "conditional": False, "estimator": args.estimator, "variant": args.variant,
        "components": args.components, "latent_dim": args.latent_dim, "hidden": list(args.hidden),
        "temperature": args.temperature, "temperature_decay": args.temperature_decay,
        "temperature_min": args.temperature_min, "straight_through": args.straight_through,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "iwae": args.iwae,
        "compile": args.compile,
    }
    train, test, data = run_data(config)  # raises DataError for data that are not 0/1
    config.update(shape=list(data.shape), levels=data.levels, num_classes=data.num_classes)
    device = default_device()
    torch.manual_seed(args.seed)
    model = GMVAE(GMVAEConfig(train[0].shape[1], args.components, args.latent_dim, args.hidden, args.variant,
                              args.temperature, args.straight_through)).to(device)
    train, test = tuple(t.to(device) for t in train), tuple(t.to(device) for t in test)
    schedule = TemperatureSchedule(args.temperature, args.temperature_decay, args.temperature_min)

    def evaluate(model: GMVAE) -> dict:
        metrics = cluster_metrics(model, test[0], data.y_test, data.num_classes)
        scalars = {k: metrics[k] for k in ("conditional_entropy", "cluster_accuracy") if k in metrics}
        gumbel = {} if args.estimator == "marginal" else {"temperature": model.temperature}  # this epoch's tau
        return {"test_elbo": test_elbo(model, test), **scalars, **gumbel}

    trainer = Trainer(model, "joint", args.lr, args.batch_size, args.estimator, args.seed, progress,
                      torch_compile=args.compile)
    metrics_path = run_dir / "metrics.jsonl"
    start = time.perf_counter()
    history = trainer.fit(train, epochs=args.epochs, evaluate=evaluate, eval_every="epoch",
                          callbacks=[lambda records: append_jsonl(metrics_path, records), schedule.callback(model)])
    seconds = time.perf_counter() - start

    torch.manual_seed(args.seed)
    final = cluster_metrics(model, test[0], data.y_test, data.num_classes)
    elbo = test_elbo(model, test).item()
    summary = {
        "model": "gmvae", "dataset": args.dataset, "estimator": args.estimator, "variant": args.variant,
        "epochs": history[-1]["epoch"], "steps": trainer.step_count, "train_elbo": history[-1]["train_elbo"],
        "test_elbo": elbo,
        "test_elbo_without_log_c": elbo + math.log(args.components),  # comparable with the tutorial's printed values
        "conditional_entropy": final["conditional_entropy"],
        "cluster_accuracy": final.get("cluster_accuracy"),
        "nmi": final.get("nmi"),
        "cluster_proportions": [round(float(p), 4) for p in final["cluster_proportions"]],
    }
    if args.iwae:
        summary.update(iwae_log_likelihood=iwae_log_likelihood(model, test, args.iwae).item(), iwae_samples=args.iwae)
    summary.update(train_seconds=seconds, device=device_name(device))

    plotting.epoch_panels(history, {"test_elbo": "test ELBO (nats)", "conditional_entropy": "H(q(y|x)) (nats)",
                                    "cluster_accuracy": "clustering accuracy"},
                          run_dir / "gmvae_learning_curves.png", title=f"GMVAE ({args.estimator}) on {args.dataset}")
    write_generations(model, final, config, run_dir)
    save_run(run_dir, model.cpu(), config, summary)
    return summary


def write_generations(model: GMVAE, metrics: dict, config: dict, run_dir: Path) -> None:
    """p(x = 1 | z), z ~ p(z | y = c): one row per cluster c, rows in the order of their matched labels."""
    c, proportions = model.config.num_components, metrics["cluster_proportions"]
    matched = metrics.get("matched_labels", np.full(c, -1))
    order = clustering.order_by_label(matched)
    torch.manual_seed(config["seed"])
    with eval_mode(model):
        images = model.generate(GENERATIONS_PER_CLUSTER)[torch.as_tensor(order)]  # (C, N, D), rows reordered
    rows = [f"{'label ' + str(matched[k]) if matched[k] >= 0 else 'unmatched'} (cluster {k}, {proportions[k]:.0%})"
            for k in order]
    plotting.image_grid(plotting.as_grid(images.reshape(c * GENERATIONS_PER_CLUSTER, -1), config["shape"], GENERATIONS_PER_CLUSTER),
                        run_dir / "gmvae_cluster_generations.png", rows,
                        title="generations per cluster, p(x=1|z), z ~ p(z|y)")
