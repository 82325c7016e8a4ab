"""``aevb fit vrnn``: the tutorial's variational RNN (§5.6) on sequences, images read row by row.

Defaults are the tutorial's (latent 2 per step, a 2-layer LSTM of 256, MLPs 500-500, batch 100, Adam
1e-3) on scikit-learn's 8x8 digits (8 steps of 8 pixels), which ship with the project; full MNIST
(28 steps of 28 pixels) with ``--dataset mnist --data-dir DIR``; your own sequences as an (N, T, D) array in
a .npy/.npz file. Image pixels are binarized as in the tutorial (Bernoulli likelihood); a user's binary
sequences get a Bernoulli likelihood, values in [0, 1] a continuous Bernoulli one. Writes per-epoch test
ELBOs (metrics.jsonl), the learning curve, generations from the prior row by row (a grid and an animated
GIF), a t-SNE of the concatenated test posterior means, and a summary with the test ELBO and the
importance-weighted estimate of log p(x_{1:T}), in nats per sequence.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor

from aevb import plotting
from aevb.data import as_sequences, load_dataset, prepare, validate_support
from aevb.evaluation import eval_mode, evaluate, test_elbo
from aevb.experiments.arguments import add_dataset_arguments, add_training_arguments, positive_int
from aevb.models.vrnn import LIKELIHOODS, VRNN, VRNNConfig
from aevb.runs import append_jsonl, default_device, device_name, save_run
from aevb.trainer import Trainer

MODELS = ("vrnn",)
GRID_ROWS, GRID_COLUMNS = 4, 10
# The tutorial's published test ELBOs on binarized MNIST, epochs 1-7 (its code draws z_t with sample()).
TUTORIAL_MNIST_TEST_ELBO = (-93.0, -85.5, -81.2, -79.9, -79.2, -78.3, -78.5)


def add_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    add_dataset_arguments(parser, user_files="a .npy/.npz file of sequences (N, T, D)")
    parser.add_argument("--likelihood", choices=LIKELIHOODS, default=None,
                        help="p(x_t | h_t, z_t): bernoulli or cb (continuous Bernoulli) (default: bernoulli for images "
                             "and binary sequences, cb for sequences of other values in [0, 1])")
    parser.add_argument("--latent-dim", type=positive_int, default=2, help="latent dimension per step (default 2)")
    parser.add_argument("--hidden", type=positive_int, default=256, help="LSTM hidden size per layer (default 256)")
    parser.add_argument("--iwae", type=positive_int, default=100,
                        help="whole-trajectory importance samples K for the test log-likelihood (default 100)")
    add_training_arguments(parser, epochs=7, batch_size=100, lr=1e-3)


def load_sequences(dataset: str, data_dir: str | None, seed: int, likelihood: str | None = None):
    """(x_train (N, T, D), x_test (M, T, D), y_test or None, likelihood, transform) of a data set.

    Integer pixels are binarized (Bernoulli) or dequantized (continuous Bernoulli); data already binary,
    and a user's float data, are taken as they are. Raises DataError for data that are not sequences
    (T, D) or lie outside the likelihood's support.
    """
    data = load_dataset(dataset, data_dir, seed=seed)
    binary = all(bool(((x == 0) | (x == 1)).all()) for x in (data.x_train, data.x_test))
    if binary or data.levels is None:
        likelihood, transform = likelihood or ("bernoulli" if binary else "cb"), "none"
    else:
        likelihood = likelihood or "bernoulli"
        transform = "binarize" if likelihood == "bernoulli" else "dequantize"
    x_train, _, x_test, y_test = prepare(data, transform, seed)
    for x, split in ((x_train, "training"), (x_test, "test")):
        validate_support(x, likelihood, f"{dataset} ({split} set)")
    return as_sequences(x_train, data.shape), as_sequences(x_test, data.shape), y_test, likelihood, transform


def run(args, run_dir: Path, progress: bool) -> dict:
    x_train, x_test, y_test, likelihood, transform = load_sequences(args.dataset, args.data_dir, args.seed, args.likelihood)
    _, seq_len, data_dim = x_train.shape
    config = {
        "model": "vrnn", "dataset": args.dataset, "data_dir": args.data_dir, "likelihood": likelihood,
        "transform": transform, "conditional": False, "shape": [seq_len, data_dim], "latent_dim": args.latent_dim,
        "hidden": args.hidden, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "iwae": args.iwae, "compile": args.compile,
    }
    device = default_device()
    torch.manual_seed(args.seed)
    model = VRNN(VRNNConfig(data_dim, seq_len, args.latent_dim, args.hidden, likelihood=likelihood)).to(device)
    x_train, x_test = x_train.to(device), x_test.to(device)

    trainer = Trainer(model, "joint", args.lr, args.batch_size, seed=args.seed, progress=progress,
                      torch_compile=args.compile)
    metrics_path = run_dir / "metrics.jsonl"
    start = time.perf_counter()
    history = trainer.fit((x_train,), epochs=args.epochs, evaluate=lambda m: {"test_elbo": test_elbo(m, (x_test,))},
                          eval_every="epoch", callbacks=[lambda records: append_jsonl(metrics_path, records)])
    seconds = time.perf_counter() - start

    summary = {
        "model": "vrnn", "dataset": args.dataset, "likelihood": likelihood, "transform": transform,
        "sequence_shape": [seq_len, data_dim], "epochs": history[-1]["epoch"], "steps": trainer.step_count,
        "train_elbo": history[-1]["train_elbo"], **evaluate(model, (x_test,), args.iwae, seed=args.seed),
        "train_seconds": seconds, "device": device_name(device),
    }
    write_figures(model, history, x_test, y_test, config, run_dir)
    save_run(run_dir, model.cpu(), config, summary)
    return summary


def test_set(config: dict) -> tuple[tuple[Tensor, ...], None]:
    """A run's test sequences (x,), rebuilt from its config, and no pixel levels (for ``aevb eval``)."""
    _, x_test, _, _, _ = load_sequences(config["dataset"], config["data_dir"], config["seed"], config["likelihood"])
    return (x_test,), None


def write_figures(model: VRNN, history: list[dict], x_test: Tensor, y_test: Tensor | None, config: dict,
                  run_dir: Path) -> None:
    """Learning curve, generations (grid of decoder parameters and of samples, GIF of rows appearing), t-SNE."""
    curves = {"train_elbo": "training ELBO (epoch mean)", "test_elbo": "test ELBO"}
    if config["dataset"] == "mnist":
        history = history + [{"epoch": e, "tutorial": v} for e, v in enumerate(TUTORIAL_MNIST_TEST_ELBO, start=1)]
        curves["tutorial"] = "tutorial's test ELBO (its code draws z_t with sample())"
    plotting.epoch_curves(history, curves, run_dir / "vrnn_learning_curve.png",
                          title=f"vrnn on {config['dataset']}, nats per sequence")
    torch.manual_seed(config["seed"])
    with eval_mode(model):
        samples, parameters = model.generate(GRID_ROWS * GRID_COLUMNS)
        subset = torch.randperm(len(x_test))[:plotting.TSNE_POINTS]
        codes = model.encode(x_test[subset.to(x_test.device)]).cpu().numpy()
    shape = config["shape"]
    parameter_grid = plotting.as_grid(parameters.flatten(1), shape, GRID_COLUMNS)
    plotting.image_grid(parameter_grid, run_dir / "vrnn_decoder_parameters.png",
                        title="generated row by row from the prior: each row's decoder parameters given the rows above")
    plotting.image_grid(plotting.as_grid(samples.flatten(1), shape, GRID_COLUMNS), run_dir / "vrnn_samples.png",
                        title="generated row by row from the prior: samples")
    plotting.rows_animation(parameter_grid, run_dir / "vrnn_generation.gif",
                            title="generation row by row from the prior")
    plotting.tsne(codes, None if y_test is None else y_test[subset].numpy(), run_dir / "vrnn_tsne.png",
                  seed=config["seed"], title="t-SNE of test posterior means E_q[z_t], concatenated over t")
