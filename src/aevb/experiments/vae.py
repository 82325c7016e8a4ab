"""``aevb fit vae|cvae``: the tutorial's VAE (§5.3) and conditional VAE (§5.4) on image data.

Defaults are the tutorial's (latent 20, hidden 500-500, dropout 0.1, batch 100, Adam 3e-4, continuous
Bernoulli on dequantized pixels) on scikit-learn's digits, which ship with the project; full MNIST with
``--dataset mnist --data-dir DIR``. Writes per-epoch test ELBOs (metrics.jsonl), the learning curve,
decoder parameters and samples for prior draws, a t-SNE of test posterior means (vae) or class-conditional
grids (cvae), and a summary with the test ELBO, the IWAE estimate of log p(x) and, for dequantized data,
bits per dimension.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor

from aevb import plotting
from aevb.data import TRANSFORMS, dynamic_binarize
from aevb.evaluation import dequantized_levels, evaluate, eval_mode, run_data, test_elbo
from aevb.experiments.arguments import add_dataset_arguments, add_training_arguments, positive_float, positive_int
from aevb.likelihoods import LIKELIHOODS, parameter_image
from aevb.model import LatentVariableModel
from aevb.models.cvae import CVAE, VARIANTS, CVAEConfig
from aevb.models.vae import VAE, VAEConfig
from aevb.plotting import as_grid
from aevb.runs import UsageError, append_jsonl, default_device, device_name, save_run
from aevb.trainer import Trainer

MODELS = ("vae", "cvae")
DEFAULT_TRANSFORMS = {"cb": "dequantize", "bernoulli": "binarize", "gaussian": "dequantize"}
GRID_COLUMNS = 10


def hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive layer widths such as 500,500, got {text!r}")
    return sizes


def add_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    add_dataset_arguments(parser)
    parser.add_argument("--likelihood", choices=LIKELIHOODS, default="cb",
                        help="p(x|z): cb (continuous Bernoulli), bernoulli or gaussian (default cb)")
    parser.add_argument("--gaussian-scale", type=positive_float, default=None,
                        help="a fixed sigma for --likelihood gaussian (default: learned per pixel)")
    parser.add_argument("--transform", choices=TRANSFORMS, default=None,
                        help="pixel transform (default: binarize for bernoulli, else dequantize)")
    if model == "cvae":
        parser.add_argument("--variant", choices=VARIANTS, default="full",
                            help="full: p(x|y,z) p(z|y); prior-only: p(x|z) p(z|y); decoder-only: p(x|y,z) p(z) (default full)")
    parser.add_argument("--latent-dim", type=positive_int, default=20, help="latent dimension (default 20)")
    parser.add_argument("--hidden", type=hidden_sizes, default=(500, 500), help="hidden layer widths (default 500,500)")
    parser.add_argument("--iwae", type=positive_int, default=100,
                        help="importance samples K for the test log-likelihood (default 100; aevb eval RUN --iwae 1000)")
    add_training_arguments(parser, epochs=10, batch_size=100, lr=3e-4)


def build_model(args, data_dim: int, num_classes: int | None) -> LatentVariableModel:
    common = dict(data_dim=data_dim, latent_dim=args.latent_dim, hidden=args.hidden, likelihood=args.likelihood,
                  likelihood_scale=args.gaussian_scale)
    if args.model == "cvae":
        return CVAE(CVAEConfig(**common, num_classes=num_classes, variant=args.variant))
    return VAE(VAEConfig(**common))


def run(args, run_dir: Path, progress: bool) -> dict:
    if args.gaussian_scale is not None and args.likelihood != "gaussian":
        raise UsageError(f"--gaussian-scale is for --likelihood gaussian, not {args.likelihood}")
    config = {
        "model": args.model, "dataset": args.dataset, "data_dir": args.data_dir, "likelihood": args.likelihood,
        "transform": args.transform or DEFAULT_TRANSFORMS[args.likelihood], "conditional": args.model == "cvae",
        "variant": getattr(args, "variant", None), "latent_dim": args.latent_dim, "hidden": list(args.hidden),
        "gaussian_scale": args.gaussian_scale, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "iwae": args.iwae, "compile": args.compile,
    }
    train, test, data = run_data(config)
    config.update(shape=list(data.shape), levels=data.levels, num_classes=data.num_classes)
    device = default_device()
    torch.manual_seed(args.seed)
    try:
        model = build_model(args, train[0].shape[1], data.num_classes).to(device)
    except ValueError as e:  # a configuration the data make impossible, e.g. labels of a single class
        raise UsageError(f"--dataset {args.dataset}: {e}") from None
    train, test = tuple(t.to(device) for t in train), tuple(t.to(device) for t in test)

    trainer = Trainer(model, "joint", args.lr, args.batch_size, seed=args.seed, progress=progress,
                      torch_compile=args.compile)
    metrics_path = run_dir / "metrics.jsonl"
    start = time.perf_counter()
    history = trainer.fit(train, epochs=args.epochs, evaluate=lambda m: {"test_elbo": test_elbo(m, test)},
                          eval_every="epoch", callbacks=[lambda records: append_jsonl(metrics_path, records)],
                          transform=dynamic_binarize if config["transform"] == "dynamic-binarize" else None)
    seconds = time.perf_counter() - start

    summary = {
        "model": args.model, "dataset": args.dataset, "likelihood": args.likelihood, "transform": config["transform"],
        "epochs": history[-1]["epoch"], "steps": trainer.step_count, "train_elbo": history[-1]["train_elbo"],
        **evaluate(model, test, args.iwae, dequantized_levels(config, data), args.seed),
        "train_seconds": seconds, "device": device_name(device),
    }
    write_figures(model, history, test[0], data.y_test, config, run_dir)
    save_run(run_dir, model.cpu(), config, summary)
    return summary


def test_set(config: dict) -> tuple[tuple[Tensor, ...], int | None]:
    """A run's test tensors (x, *context) and, for dequantized data, the pixel levels (for ``aevb eval``)."""
    _, test, data = run_data(config)
    return test, dequantized_levels(config, data)


def write_figures(model: LatentVariableModel, history: list[dict], x_test: Tensor, y_test: Tensor | None,
                  config: dict, run_dir: Path) -> None:
    """The tutorial's figures 5-9 for this run (see the module docstring)."""
    name, shape = config["model"], config["shape"]
    plotting.epoch_curves(history, {"train_elbo": "training ELBO (epoch mean)", "test_elbo": "test ELBO"},
                          run_dir / f"{name}_learning_curve.png", title=f"{name} on {config['dataset']}")
    torch.manual_seed(config["seed"])
    with eval_mode(model):
        if config["conditional"]:
            labels = torch.arange(config["num_classes"]).repeat_interleave(GRID_COLUMNS)  # one row per class
            p_x = model.decode(len(labels), labels)
            rows = [str(c) for c in range(config["num_classes"])]
        else:
            p_x, rows = model.decode(3 * GRID_COLUMNS), None
        for what, x in (("decoder_parameters", parameter_image(p_x)), ("samples", p_x.sample())):
            plotting.image_grid(as_grid(x, shape, GRID_COLUMNS), run_dir / f"{name}_{what}.png", rows,
                                title=f"{what.replace('_', ' ')} for draws from the prior")
        if not config["conditional"]:
            subset = torch.randperm(len(x_test))[:plotting.TSNE_POINTS]
            codes = model.encode(x_test[subset.to(x_test.device)]).cpu().numpy()
            labels = None if y_test is None else y_test[subset].numpy()
            plotting.tsne(codes, labels, run_dir / f"{name}_tsne.png", seed=config["seed"],
                          title="t-SNE of test posterior means E_q[z|x]")

