"""Training speed: aevb's training loop against a plain PyTorch loop written the way the tutorial's code is.

    PYTHONPATH=src python benchmarks/bench.py --models vae,cvae --data-dir ../shared/data/mnist [--epochs N | --steps N] [--json]

Each model has a module ``bench_<model>.py`` beside this file exposing ``time_model(args) -> dict`` with
at least ``ours_seconds``, ``plain_seconds`` and ``ratio`` (ours / plain); both loops are timed in the
same process, on the same device, data, architecture, batch size and initial parameters. This driver runs
the models asked for, prints the ratio per model, writes all results as JSON to ``--out`` and, with
``--json``, prints them as one JSON object (keyed by model) on the last line.

The helpers below (device synchronization, the two timed loops, the parameter and number checks) are
shared by the ``bench_<model>`` modules.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from aevb.data import load_dataset, prepare
from aevb.model import LatentVariableModel
from aevb.trainer import Trainer

WARMUP_STEPS = 3  # the first steps set up the allocator, kernels and optimizer state: run, not timed
COMPILE_WARMUP_STEPS = 5  # with torch_compile: an eager step, compiling, CUDA-graph warm-up and recording


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock times measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def load_tensors(args: argparse.Namespace, transform: str, labels: bool = False) -> tuple[Tensor, ...]:
    """The training set of ``args.dataset`` after ``transform``: (x,) or (x, y), float32 (N, D) on the CPU."""
    x_train, y_train, _, _ = prepare(load_dataset(args.dataset, args.data_dir, seed=args.seed), transform, args.seed)
    return (x_train, y_train) if labels else (x_train,)


def time_ours(model: LatentVariableModel, tensors: Sequence[Tensor], args: argparse.Namespace, lr: float,
              steps: int | None = None, **fit_options) -> tuple[float, list[dict]]:
    """Seconds and history of ``Trainer.fit`` on tensors already on the device (``args.epochs`` or ``steps``).

    With ``args.compile`` the trainer compiles its step; compiling happens in warm-up steps, not timed.
    """
    device = tensors[0].device
    trainer = Trainer(model, lr=lr, batch_size=args.batch_size, seed=args.seed, progress=False, torch_compile=args.compile)
    if args.compile:
        trainer.fit(tensors, steps=COMPILE_WARMUP_STEPS, **fit_options)  # fit trains more: the timed run is as long
    synchronize(device)
    start = time.perf_counter()
    history = trainer.fit(tensors, epochs=None if steps else args.epochs, steps=steps, **fit_options)
    synchronize(device)
    return time.perf_counter() - start, history


def time_plain(elbo: Callable[..., Tensor], module: nn.Module, tensors: Sequence[Tensor], args: argparse.Namespace,
               lr: float, steps: int | None = None,
               evaluate: Callable[[], Sequence[Tensor]] | None = None) -> tuple[float, list[float]]:
    """Seconds and per-step ELBOs of the tutorial's loop: a shuffled DataLoader over a TensorDataset on the CPU,
    each batch moved to the device, one Adam over all parameters, and ``.item()`` (``float()``) of every batch's mean ELBO.

    ``elbo(*batch)`` returns the batch's mean ELBO; runs ``args.epochs`` epochs, or ``steps`` steps.
    ``evaluate()``, if given, runs after every step without gradients, each of its values ``float()``-ed.
    """
    device = next(module.parameters()).device
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(*tensors), batch_size=args.batch_size, shuffle=True)
    epochs = itertools.count() if steps else range(args.epochs)
    elbos: list[float] = []
    synchronize(device)
    start = time.perf_counter()
    for _ in epochs:
        for batch in loader:
            if steps and len(elbos) == steps:
                break
            value = elbo(*(t.to(device) for t in batch))
            optimizer.zero_grad()
            (-value).backward()
            optimizer.step()
            elbos.append(value.item())
            if evaluate is not None:
                with torch.no_grad():
                    [float(v) for v in evaluate()]
        if steps and len(elbos) == steps:
            break
    synchronize(device)
    return time.perf_counter() - start, elbos


@torch.no_grad()
def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the parameters of ``source``: the same layers registered in the same order."""
    for ours, plain in zip(source.parameters(), target.parameters(), strict=True):
        plain.copy_(ours)


def gradient_norm(module: nn.Module) -> float:
    """|| d(objective) / d(all parameters) ||."""
    return torch.sqrt(sum(p.grad.pow(2).sum() for p in module.parameters() if p.grad is not None)).item()


def check_same_numbers(ours: tuple[nn.Module, Callable[[], Tensor]], plain: tuple[nn.Module, Callable[[], Tensor]],
                       seed: int) -> dict:
    """Mean ELBO and its gradient norm from both implementations, from the same noise (the same seed)."""
    results = []
    for module, elbo in (ours, plain):
        module.zero_grad()
        torch.manual_seed(seed)
        value = elbo()
        value.backward()
        results.append((value.item(), gradient_norm(module)))
        module.zero_grad()
    (ours_elbo, ours_grad), (plain_elbo, plain_grad) = results
    return {"elbo_ours": ours_elbo, "elbo_plain": plain_elbo, "elbo_abs_diff": abs(ours_elbo - plain_elbo),
            "grad_norm_rel_diff": abs(ours_grad - plain_grad) / plain_grad}


def compare(ours: Callable[[int | None], tuple[float, float]], plain: Callable[[int | None], tuple[float, float]],
            args: argparse.Namespace) -> dict:
    """Warm both loops up, then time each over ``args.steps`` steps (or ``args.epochs`` epochs).

    ``ours(steps)`` and ``plain(steps)`` train a fresh model (the same initial parameters in both) and
    return (seconds, mean training ELBO of the last epoch), the ELBO showing both loops learn alike.
    """
    if not args.compile:  # a compiled run warms itself up, compiling (see ``time_ours``)
        ours(WARMUP_STEPS)
    plain(WARMUP_STEPS)
    ours_seconds, ours_elbo = ours(args.steps)
    plain_seconds, plain_elbo = plain(args.steps)
    return {"ours_seconds": ours_seconds, "plain_seconds": plain_seconds, "ratio": ours_seconds / plain_seconds,
            "ours_train_elbo": ours_elbo, "plain_train_elbo": plain_elbo}


def count_syncs(train: Callable[[int], object], steps: int) -> int:
    """Host-device synchronizations while ``train(steps)`` runs (CUDA's sync-debug warnings, counted)."""
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(steps)
    torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def compare_models(fresh: Callable[[], tuple[LatentVariableModel, nn.Module]], train: Sequence[Tensor],
                   args: argparse.Namespace, lr: float) -> dict:
    """The whole comparison for one model: same numbers first, then both loops timed (see ``compare``).

    ``fresh()`` returns (ours, plain) on the device with the same initial parameters, ``plain.elbo(*batch)``
    being the batch's mean ELBO; ``train`` are the training tensors (x, *context) on the CPU.
    """
    ours, plain = fresh()
    device = next(ours.parameters()).device
    on_device = tuple(t.to(device) for t in train)
    batch = tuple(t[:args.batch_size] for t in on_device)
    numbers = check_same_numbers((ours, lambda: ours.elbo(*batch).elbo.mean()), (plain, lambda: plain.elbo(*batch)), args.seed)

    def run_ours(steps: int | None) -> tuple[float, float]:
        seconds, history = time_ours(fresh()[0], on_device, args, lr, steps)
        return seconds, history[-1]["train_elbo"]

    def run_plain(steps: int | None) -> tuple[float, float]:
        plain = fresh()[1]
        seconds, elbos = time_plain(plain.elbo, plain, train, args, lr, steps)
        per_epoch = -(-len(train[0]) // args.batch_size)
        return seconds, sum(elbos[-per_epoch:]) / len(elbos[-per_epoch:])

    if device.type == "cuda" and not args.compile:  # a sync makes the CPU wait for the GPU's queue to drain
        numbers.update(ours_syncs_in_20_steps=count_syncs(run_ours, 20), plain_syncs_in_20_steps=count_syncs(run_plain, 20))
    return {**compare(run_ours, run_plain, args), "device": device_name(device), "batch_size": args.batch_size,
            "compiled": args.compile, **numbers}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vae,cvae", help="comma-separated: fa, vae, cvae, gmvae, vrnn (default vae,cvae)")
    parser.add_argument("--dataset", default="mnist", help="mnist (default), digits, idx:DIR or a .npy/.npz file")
    parser.add_argument("--data-dir", default=None, help="MNIST's folder (else $AEVB_DATA_DIR, else download)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=1, help="time this many epochs (default 1)")
    length.add_argument("--steps", type=int, default=None, help="time this many training steps instead of epochs")
    parser.add_argument("--batch-size", type=int, default=100, help="mini-batch size (default 100)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="time aevb's trainer with torch_compile=True")
    parser.add_argument("--out", type=Path, default=Path("runs/bench.json"), help="JSON results file (default runs/bench.json)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))  # the bench_<model> modules, whatever the working folder
    results = {}
    for name in args.models.split(","):
        module = importlib.import_module(f"bench_{name}")
        results[name] = module.time_model(args)
        r = results[name]
        print(f"{name:<6} ours {r['ours_seconds']:8.3f} s   plain {r['plain_seconds']:8.3f} s   "
              f"ratio ours/plain {r['ratio']:.3f}   ({r.get('device', args.device)}{', compiled' if args.compile else ''})",
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
