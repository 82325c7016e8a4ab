"""Honest evaluation of a fitted model on a test set, in eval mode (dropout off), in batches.

* ``test_elbo``: the mean over the test set of the one-sample AEVB estimate of the ELBO, nats per example;
* ``iwae_log_likelihood``: the mean K-sample importance-weighted bound
  log (1/K) sum_k p(x, z_k) / q(z_k | x) <= log p(x), K weights drawn in chunks (bounded memory for any K);
  for a conditional model the batch's context (the label y) makes it a bound on log p(x | y);
* ``bits_per_dim``: for dequantized data u = (x + noise) / levels of integer pixels x, a density p on
  [0, 1]^D bounds the probability of the discrete data, log P(x) >= E_noise[log p(u)] - D ln(levels), so
  bits/dim = -(log p(u) - D ln levels) / (D ln 2), with log p(u) estimated by the IWAE bound. This makes
  numbers comparable across likelihoods and with the literature.

``evaluate_run`` evaluates a run directory on the test set its experiment rebuilds from config.json (for
image data, ``run_data`` does it from the keys ``dataset``, ``data_dir``, ``transform``, ``likelihood``,
``seed`` and ``conditional``), so ``aevb eval RUN_DIR`` needs nothing else.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from aevb.data import ImageData, load_dataset, prepare, validate_support
from aevb.model import LatentVariableModel
from aevb.runs import UsageError, default_device, load_run

RunData = tuple[tuple[Tensor, ...], tuple[Tensor, ...], ImageData]


@contextmanager
def eval_mode(model: LatentVariableModel) -> Iterator[torch.device]:
    """Dropout off and no gradients inside; the model's mode restored after. Yields its device."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def in_batches(tensors: Sequence[Tensor], batch_size: int, device: torch.device) -> Iterator[tuple[Tensor, ...]]:
    """The rows of ``tensors`` in order, ``batch_size`` at a time, on ``device``."""
    for start in range(0, len(tensors[0]), batch_size):
        yield tuple(t[start:start + batch_size].to(device) for t in tensors)


def test_elbo(model: LatentVariableModel, tensors: Sequence[Tensor], batch_size: int = 1000) -> Tensor:
    """Mean one-sample ELBO over the rows of ``tensors`` = (x, *context); a 0-dim tensor, nats per example."""
    with eval_mode(model) as device:
        total = sum(model.elbo(*batch).elbo.sum() for batch in in_batches(tensors, batch_size, device))
    return total / len(tensors[0])


def iwae_log_likelihood(
    model: LatentVariableModel, tensors: Sequence[Tensor], num_samples: int, batch_size: int = 100, chunk_size: int = 100
) -> Tensor:
    """Mean K-sample importance-weighted bound on log p(x) (or log p(x | context)); a 0-dim tensor.

    Shows a progress bar in a terminal (K forward passes over the test set can take minutes on a CPU).
    """
    with eval_mode(model) as device:
        batches = tqdm(in_batches(tensors, batch_size, device), total=math.ceil(len(tensors[0]) / batch_size),
                       desc=f"IWAE bound, K = {num_samples}", unit="batch", leave=False, disable=None)
        total = sum(model.iwae_bound(*batch, num_samples=num_samples, chunk_size=chunk_size).sum() for batch in batches)
    return total / len(tensors[0])


def bits_per_dim(log_density: float, data_dim: int, levels: int) -> float:
    """-(log p(u) - D ln levels) / (D ln 2): bits per pixel of the discrete data behind dequantized u."""
    return -(log_density - data_dim * math.log(levels)) / (data_dim * math.log(2))


def evaluate(
    model: LatentVariableModel, tensors: Sequence[Tensor], num_samples: int, levels: int | None = None, seed: int = 0
) -> dict:
    """Summary keys ``test_elbo``, ``iwae_log_likelihood``, ``iwae_samples`` (+ ``bits_per_dim`` given ``levels``).

    Seeded, so the same model, data and K give the same numbers.
    """
    torch.manual_seed(seed)
    summary = {
        "test_elbo": test_elbo(model, tensors).item(),
        "iwae_log_likelihood": iwae_log_likelihood(model, tensors, num_samples).item(),
        "iwae_samples": num_samples,
    }
    if levels is not None:
        summary["bits_per_dim"] = bits_per_dim(summary["iwae_log_likelihood"], tensors[0].shape[1], levels)
    return summary


def run_data(config: dict) -> RunData:
    """((x_train, *context), (x_test, *context), raw data) for a run's data settings.

    The context is the labels for a conditional model (``config['conditional']``). Raises UsageError
    when a conditional model gets unlabelled data, or the data lie outside the likelihood's support.
    """
    data = load_dataset(config["dataset"], config["data_dir"], seed=config["seed"])
    if config["conditional"] and data.y_train is None:
        raise UsageError(f"--dataset {config['dataset']} has no labels, and a conditional model needs them; "
                         "use a labelled data set (mnist, digits, idx:DIR, or an .npz with y and y_test)")
    x_train, y_train, x_test, y_test = prepare(data, config["transform"], config["seed"])
    # dynamic binarization's training data are probabilities (prepare checked they lie in [0, 1]), binarized per batch
    splits = {"test": x_test} if config["transform"] == "dynamic-binarize" else {"training": x_train, "test": x_test}
    for split, x in splits.items():
        validate_support(x, config["likelihood"], f"{config['dataset']} ({split} set, --transform {config['transform']})")
    if config["conditional"]:
        return (x_train, y_train), (x_test, y_test), data
    return (x_train,), (x_test,), data


def dequantized_levels(config: dict, data: ImageData) -> int | None:
    """The pixel levels behind dequantized data (for bits/dim), else None."""
    return data.levels if config["transform"] == "dequantize" else None


def evaluate_run(run_dir: str | os.PathLike, num_samples: int) -> dict:
    """``evaluate`` a finished run on its own test set, seeded by the run's seed.

    The run's experiment module rebuilds the test set from config.json: its ``test_set(config)`` returns
    the test tensors (x, *context) and the pixel levels behind dequantized data (or None).
    """
    from aevb.experiments import module_for  # here: the experiments import this module

    model, config = load_run(run_dir)
    module = module_for(config["model"])
    if not hasattr(module, "test_set"):
        raise UsageError(f"aevb eval does not support {config['model']} runs (the summary.json of {run_dir} has "
                         "their test numbers)")
    test, levels = module.test_set(config)
    model.to(default_device())
    return {"model": config["model"], **evaluate(model, test, num_samples, levels, config["seed"])}


def generate(model: LatentVariableModel, config: dict, num_samples: int, label: int | None = None) -> tuple[Tensor, list[str] | None]:
    """Draws x ~ p(x) (N, D) and the labels of their rows (or None).

    A conditional model draws ``num_samples`` for ``label``, or, without one, ``num_samples`` for each
    class, one row per class (the tutorial's Figure 8).
    """
    if label is not None and not config.get("conditional"):
        raise UsageError(f"--label is for conditional models (cvae); this run is a {config['model']}")
    if label is not None and not 0 <= label < config["num_classes"]:
        raise UsageError(f"--label {label} is not a class of this run: use 0 to {config['num_classes'] - 1}")
    with eval_mode(model):
        if not config.get("conditional"):
            return model.sample(num_samples), None
        classes = [label] if label is not None else list(range(config["num_classes"]))
        labels = torch.tensor(classes).repeat_interleave(num_samples)
        return model.sample(len(labels), labels), [str(c) for c in classes]
