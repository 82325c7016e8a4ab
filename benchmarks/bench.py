"""Training speed: aevb's training loop against a plain PyTorch loop written the way the tutorial's code is.

    PYTHONPATH=src python benchmarks/bench.py --models vae,cvae --data-dir ../shared/data/mnist \
        [--epochs N | --steps N] [--modes eager,compiled] [--repeats R] [--json]

Each model has a module ``bench_<model>.py`` beside this file exposing ``time_model(args) -> list[dict]``,
one row per mode (eager; compiled: aevb's trainer with ``torch_compile=True``), each with at least ``device``,
``compiled``, ``ours_seconds``, ``plain_seconds`` and ``ratio`` (ours / plain). The loops are timed in the
same process, on the same device, data, architecture, batch size and initial parameters, after checking that
they compute the same ELBO and gradient (``check_same_numbers``: a model whose two loops differ is not timed, its
row says why). This driver runs the models asked for, prints the ratio per row, and appends each model's rows as
JSON lines to ``--out`` as soon as that model is measured (and, with ``--json``, prints them), so that a run cut
short keeps the models it finished and no run replaces another's results.
With ``--repeats R`` every loop of a model is timed R times in rounds, back to back, and a row gives the
medians (on a shared machine the load changes between minutes more than within one round).
On a GPU a row also counts host-device synchronizations per step, and a compiled row the CUDA-graph replays
per step, graph breaks, skipped CUDA graphs and generated kernels, with the compile time of its warm-up steps.

The helpers below (device synchronization, the two timed loops, the parameter and number checks) are
shared by the ``bench_<model>`` modules.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import itertools
import json
import math
import statistics
import sys
import time
import traceback
import unittest.mock
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch._dynamo.utils import counters
from torch._inductor import metrics
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from aevb.arguments import positive_int
from aevb.data import load_dataset, prepare
from aevb.model import LatentVariableModel
from aevb.models.vae import Dropout
from aevb.trainer import Trainer

WARMUP_STEPS = 3  # the first steps set up the allocator, kernels and optimizer state: run, not timed
COMPILE_WARMUP_STEPS = 5  # with torch_compile: an eager step, compiling, CUDA-graph warm-up and recording
SYNC_STEPS = 20  # host-device synchronizations per step: those of 2n steps less those of n, over n


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


class GraphReplays:
    """Counts CUDA-graph replays inside ``with``: torch.compile's CUDA graphs are ``torch.cuda.CUDAGraph``s."""

    def __enter__(self) -> "GraphReplays":
        self.count, self.replay = 0, torch.cuda.CUDAGraph.replay

        def counted(graph: torch.cuda.CUDAGraph) -> None:
            self.count += 1
            self.replay(graph)

        torch.cuda.CUDAGraph.replay = counted
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.CUDAGraph.replay = self.replay


def syncs_per_step(train: Callable[[int], object]) -> float:
    """Host-device synchronizations per step of ``train(steps)`` (CUDA's sync-debug warnings, counted).

    Those of ``2 n`` steps less those of ``n``, over ``n``: what a call does once (a record at its end) cancels."""
    counts = []
    for steps in (SYNC_STEPS, 2 * SYNC_STEPS):
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(steps)
        torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    return (counts[1] - counts[0]) / SYNC_STEPS


def compile_counters() -> dict:
    """torch.compile's counts since the last ``torch._dynamo.reset()``: graphs compiled, graph breaks, CUDA graphs
    skipped (inductor's "skipping cudagraphs"), and the kernels inductor generated (Triton's on a GPU)."""
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"], "generated_kernels": metrics.generated_kernel_count}


GEMMS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)
GEMM_REPEATS = 20  # timed calls of each distinct GEMM, after as many warm-up calls
CACHE_FLUSH_BYTES = 64 * 2**20  # written before each cold call: more than the last-level cache (32 MiB on this
# project's CPU, 50 MiB of L2 on an H100 or H200)


class RecordGemms(TorchDispatchMode):
    """The matrix products run inside ``with``: each call's op and its operands' shapes and strides (the layouts
    of the forward and backward passes: x W^T, grad W, grad^T x)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMMS:
            self.calls.append((func, tuple((a.shape, a.stride()) for a in args if isinstance(a, Tensor))))
        return func(*args, **(kwargs or {}))


def gemm_flops(call: tuple) -> int:
    """2 M K N (times the batch of a bmm) of a recorded call: the last two operands are the factors."""
    (*_, (a, _), (b, _)) = call[1]
    return 2 * math.prod(a) * b[-1]


def time_gemm(call: tuple, device: torch.device, flush: Tensor | None = None) -> float:
    """Seconds per call of one recorded matrix product, run alone on operands of the same shapes and layouts:
    repeated back to back (its operands stay in cache), or cold, with ``flush`` (a buffer larger than the caches)
    written before each call, as a training step's other work (Adam's pass over every parameter and moment, the
    next layers) leaves a product's operands out of cache."""
    func, operands = call
    tensors = [torch.empty_strided(shape, stride, device=device).uniform_() for shape, stride in operands]
    def timed(calls: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            func(*tensors)
        synchronize(device)
        return time.perf_counter() - start

    timed(GEMM_REPEATS)  # warm-up
    if flush is None:
        return timed(GEMM_REPEATS) / GEMM_REPEATS
    seconds = 0.0
    for _ in range(GEMM_REPEATS):
        flush.fill_(1.0)
        seconds += timed(1)
    return seconds / GEMM_REPEATS


def gemm_limit(model: LatentVariableModel, batch: Sequence[Tensor]) -> dict:
    """What the machine's matrix products alone would take for one training step of ``model`` on ``batch``.

    The step's forward and backward products are recorded (``RecordGemms``), each distinct one timed alone
    (``time_gemm``) in this process, and their times summed: ``limit_seconds_per_step``, a lower bound on any
    step that computes those products, beside ``gflop_per_step`` and the GEMMs' own rate ``gemm_gflops``; and
    the same with each product's operands out of cache, ``cold_limit_seconds_per_step``, what the products take
    inside a step whose other work evicts them.
    """
    model.zero_grad()
    with RecordGemms() as recorded:
        (-model.elbo(*batch).elbo.mean()).backward()
    model.zero_grad()
    device = batch[0].device
    flush = torch.empty(CACHE_FLUSH_BYTES // 4, device=device)
    distinct = dict.fromkeys(recorded.calls)
    warm = {call: time_gemm(call, device) for call in distinct}
    cold = {call: time_gemm(call, device, flush) for call in distinct}
    limit, cold_limit = (sum(seconds[call] for call in recorded.calls) for seconds in (warm, cold))
    flops = sum(gemm_flops(call) for call in recorded.calls)
    return {"gflop_per_step": flops / 1e9, "limit_seconds_per_step": limit, "cold_limit_seconds_per_step": cold_limit,
            "gemm_gflops": flops / 1e9 / limit, "gemms_per_step": len(recorded.calls)}


def time_ours(model: LatentVariableModel, tensors: Sequence[Tensor], args: argparse.Namespace, lr: float,
              steps: int | None, compiled: bool, **fit_options) -> tuple[float, list[dict], dict]:
    """Seconds and history of ``Trainer.fit`` on tensors already on the device (``steps``, or as many as
    ``args.epochs`` hold), after warm-up steps on the same trainer, and what else was measured (a dict).

    With ``compiled`` the trainer compiles its step (``torch_compile=True``) in the warm-up, whose seconds are
    ``compile_seconds``; the timed steps' CUDA-graph replays are counted. On a GPU, the host-device
    synchronizations per step are counted after the timed steps (``syncs_per_step``).
    """
    device = tensors[0].device
    trainer = Trainer(model, lr=lr, batch_size=args.batch_size, seed=args.seed, progress=False, torch_compile=compiled)
    measured: dict = {}
    if compiled:
        torch._dynamo.reset()  # one compilation per model: no earlier model's code counts against the recompile limit
        counters.clear()
        metrics.reset()
    start = time.perf_counter()
    trainer.fit(tensors, steps=COMPILE_WARMUP_STEPS if compiled else WARMUP_STEPS, **fit_options)
    synchronize(device)
    if compiled:
        measured["compile_seconds"] = time.perf_counter() - start  # the warm-up steps, compiling included
    first = trainer.step_count
    steps = steps or args.epochs * math.ceil(len(tensors[0]) / args.batch_size)  # as many as the plain loop's epochs
    with GraphReplays() if device.type == "cuda" else contextlib.nullcontext() as replays:
        start = time.perf_counter()
        history = trainer.fit(tensors, steps=steps, **fit_options)
        synchronize(device)
        seconds = time.perf_counter() - start
    measured["steps"] = trainer.step_count - first
    if replays is not None:
        measured["graph_replays_per_step"] = replays.count / measured["steps"]
    if compiled:
        measured.update(compile_counters())
    if device.type == "cuda":
        measured["syncs_per_step"] = syncs_per_step(lambda n: trainer.fit(tensors, steps=n, **fit_options))
    return seconds, history, measured


def time_loop(step: Callable[..., float], device: torch.device, tensors: Sequence[Tensor], args: argparse.Namespace,
              steps: int | None = None) -> tuple[float, list[float]]:
    """Seconds and per-step values of the tutorial's loop around ``step(*batch) -> float``: a shuffled DataLoader
    over a TensorDataset on the CPU, each batch moved to ``device``; ``args.epochs`` epochs, or ``steps`` steps."""
    loader = DataLoader(TensorDataset(*tensors), batch_size=args.batch_size, shuffle=True)
    epochs = itertools.count() if steps else range(args.epochs)
    values: list[float] = []
    synchronize(device)
    start = time.perf_counter()
    for _ in epochs:
        for batch in loader:
            if steps and len(values) == steps:
                break
            values.append(step(*(t.to(device) for t in batch)))
        if steps and len(values) == steps:
            break
    synchronize(device)
    return time.perf_counter() - start, values


def time_plain(elbo: Callable[..., Tensor], module: nn.Module, tensors: Sequence[Tensor], args: argparse.Namespace,
               lr: float, steps: int | None = None,
               evaluate: Callable[[], Sequence[Tensor]] | None = None) -> tuple[float, list[float]]:
    """Seconds and per-step ELBOs of the tutorial's loop (``time_loop``) with one Adam over all parameters and
    ``.item()`` (``float()``) of every batch's mean ELBO ``elbo(*batch)``.

    ``evaluate()``, if given, runs after every step without gradients, each of its values ``float()``-ed.
    """
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def step(*batch: Tensor) -> float:
        value = elbo(*batch)
        optimizer.zero_grad()
        (-value).backward()
        optimizer.step()
        if evaluate is not None:
            with torch.no_grad():
                [float(v) for v in evaluate()]
        return value.item()

    return time_loop(step, next(module.parameters()).device, tensors, args, steps)


@torch.no_grad()
def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the parameters of ``source``: the same layers registered in the same order."""
    for ours, plain in zip(source.parameters(), target.parameters(), strict=True):
        plain.copy_(ours)


def gradient_norm(module: nn.Module) -> float:
    """|| d(objective) / d(all parameters) ||."""
    return torch.sqrt(sum(p.grad.pow(2).sum() for p in module.parameters() if p.grad is not None)).item()


SAME_ELBO, SAME_GRADIENT = 1e-5, 1e-4  # relative: float32 summation order, not a different computation


def check_same_numbers(ours: tuple[nn.Module, Callable[[], Tensor]], plain: tuple[nn.Module, Callable[[], Tensor]],
                       seed: int) -> dict:
    """Mean ELBO and its gradient norm from both implementations, from the same noise (the same seed), and their
    differences; ValueError where they differ by more than float rounding (``SAME_ELBO``, ``SAME_GRADIENT``):
    timing two loops that compute different numbers would compare different work. aevb's dropout draws its masks
    as torch's does here (its own draws on a CPU are cheaper: ``aevb.models.vae.Dropout``, whose masks
    ``tests/test_vae.py`` checks)."""
    results = []
    for module, elbo in (ours, plain):
        module.zero_grad()
        torch.manual_seed(seed)
        with unittest.mock.patch.object(Dropout, "forward", nn.Dropout.forward):
            value = elbo()
        value.backward()
        results.append((value.item(), gradient_norm(module)))
        module.zero_grad()
    (ours_elbo, ours_grad), (plain_elbo, plain_grad) = results
    numbers = {"elbo_ours": ours_elbo, "elbo_plain": plain_elbo, "elbo_abs_diff": abs(ours_elbo - plain_elbo),
               "grad_norm_rel_diff": abs(ours_grad - plain_grad) / plain_grad}
    if numbers["elbo_abs_diff"] > SAME_ELBO * max(1.0, abs(plain_elbo)) or numbers["grad_norm_rel_diff"] > SAME_GRADIENT:
        raise ValueError(f"the two loops compute different numbers, so they were not timed: mean ELBO {ours_elbo:.6g} "
                         f"(aevb) and {plain_elbo:.6g} (plain), gradient norms {ours_grad:.6g} and {plain_grad:.6g}")
    return numbers


def compare(ours: Callable[[int | None, bool], tuple[float, float, dict]], plain: Callable[[int | None], tuple[float, float]],
            args: argparse.Namespace, others: Callable[[], dict] | None = None) -> list[dict]:
    """Time the plain loop over ``args.steps`` steps (or ``args.epochs`` epochs) after warm-up steps, then ours in each
    of ``args.modes`` (eager, compiled) as long, then ``others()`` (e.g. Pyro, the GEMM limit): ``args.repeats``
    rounds of these back to back, so that within a round the machine's load is alike. One row per mode.

    ``plain(steps)`` and ``ours(steps, compiled)`` train a fresh model (the same initial parameters in all) and
    return (seconds, mean training ELBO of the last epoch), the ELBO showing the loops learn alike (ours' epoch
    includes its warm-up steps); ``ours`` also returns what else it measured (``time_ours``). A row's numbers are
    the medians over the rounds (``ratio``: of each round's ours / plain; ``compile_seconds``: the first round's,
    as later rounds reuse what it compiled), with each round's seconds in ``rounds``.
    A mode that fails gives a row with its ``error``.
    """
    plain(WARMUP_STEPS)
    rounds: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    errors: dict[str, str] = {}
    for _ in range(args.repeats):
        plain_seconds, plain_elbo = plain(args.steps)
        for mode in args.modes:
            if mode in errors:
                continue
            try:
                ours_seconds, ours_elbo, measured = ours(args.steps, mode == "compiled")
            except Exception as error:  # e.g. compiling failed: the row says so, and the other modes and models still run
                traceback.print_exc()
                errors[mode] = f"{type(error).__name__}: {error}"
                continue
            rounds[mode].append({"ours_seconds": ours_seconds, "plain_seconds": plain_seconds,
                                 "ours_train_elbo": ours_elbo, "plain_train_elbo": plain_elbo, **measured})
        extra = others() if others is not None else {}
        for mode in args.modes:
            if mode not in errors:
                rounds[mode][-1].update(extra)
    rows = []
    for mode in args.modes:
        if mode in errors:
            rows.append({"compiled": mode == "compiled", "error": errors[mode]})
            continue
        numbers = {key: (statistics.median_low if isinstance(value, int) else statistics.median)(r[key] for r in rounds[mode])
                   for key, value in rounds[mode][0].items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
        if "compile_seconds" in numbers:  # the first round's compile; later rounds reuse inductor's caches it filled
            numbers["compile_seconds"] = rounds[mode][0]["compile_seconds"]
        ratio = statistics.median(r["ours_seconds"] / r["plain_seconds"] for r in rounds[mode])
        rows.append({"compiled": mode == "compiled", **numbers, "ratio": ratio,
                     "rounds": [{k: v for k, v in r.items() if k.endswith(("seconds", "seconds_per_step")) or k == "steps"}
                                for r in rounds[mode]]})
    return rows


def compare_models(fresh: Callable[[], tuple[LatentVariableModel, nn.Module]], train: Sequence[Tensor],
                   args: argparse.Namespace, lr: float,
                   pyro: Callable[[int | None], tuple[float, float]] | None = None) -> list[dict]:
    """The whole comparison for one model: same numbers first, then the loops timed (see ``compare``), each round with
    the GEMM limit and, where Pyro is installed (an optional benchmark dependency: ``pip install pyro-ppl``), Pyro's
    seconds for as many steps, ``pyro(steps)`` training a fresh model and returning (seconds, mean training ELBO).

    ``fresh()`` returns (ours, plain) on the device with the same initial parameters, ``plain.elbo(*batch)``
    being the batch's mean ELBO; ``train`` are the training tensors (x, *context) on the CPU. The share of the
    limit and the ratio to Pyro are medians of each round's.
    """
    ours, plain = fresh()
    device = next(ours.parameters()).device
    on_device = tuple(t.to(device) for t in train)
    batch = tuple(t[:args.batch_size] for t in on_device)
    numbers = check_same_numbers((ours, lambda: ours.elbo(*batch).elbo.mean()), (plain, lambda: plain.elbo(*batch)), args.seed)
    per_epoch = -(-len(train[0]) // args.batch_size)

    def run_ours(steps: int | None, compiled: bool) -> tuple[float, float, dict]:
        seconds, history, measured = time_ours(fresh()[0], on_device, args, lr, steps, compiled)
        whole = [r for r in history if r["step"] % per_epoch == 0] or history  # its last whole epoch, as plain's
        return seconds, whole[-1]["train_elbo"], measured

    def run_plain(steps: int | None) -> tuple[float, float]:
        plain = fresh()[1]
        seconds, elbos = time_plain(plain.elbo, plain, train, args, lr, steps)
        return seconds, sum(elbos[-per_epoch:]) / len(elbos[-per_epoch:])

    if pyro is not None and importlib.util.find_spec("pyro") is None:
        pyro = None
    if pyro is not None:
        pyro(WARMUP_STEPS)

    def others() -> dict:
        measured = gemm_limit(ours, batch)
        if pyro is not None:
            measured["pyro_seconds"], measured["pyro_train_elbo"] = pyro(args.steps)
        return measured

    def share(r: dict, seconds: str, limit: str = "limit_seconds_per_step") -> float:
        return r[limit] * r["steps"] / r[seconds]  # the products alone, over the round's time

    if device.type == "cuda":  # a sync makes the CPU wait for the GPU's queue to drain
        numbers["plain_syncs_per_step"] = syncs_per_step(run_plain)
    rows = compare(run_ours, run_plain, args, others)
    for row in rows:
        if "error" not in row:
            rounds = row["rounds"]
            row.update(limit_seconds=row["limit_seconds_per_step"] * row["steps"],
                       cold_limit_seconds=row["cold_limit_seconds_per_step"] * row["steps"],
                       share_of_limit=statistics.median(share(r, "ours_seconds") for r in rounds),
                       plain_share_of_limit=statistics.median(share(r, "plain_seconds") for r in rounds),
                       share_of_cold_limit=statistics.median(
                           share(r, "ours_seconds", "cold_limit_seconds_per_step") for r in rounds))
            if pyro is not None:
                row["ratio_to_pyro"] = statistics.median(r["ours_seconds"] / r["pyro_seconds"] for r in rounds)
    return [{**row, "device": device_name(device), "batch_size": args.batch_size, **numbers} for row in rows]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vae,cvae", help="comma-separated: fa, vae, cvae, gmvae, vrnn (default vae,cvae)")
    parser.add_argument("--dataset", default="mnist", help="mnist (default), digits, idx:DIR or a .npy/.npz file")
    parser.add_argument("--data-dir", default=None, help="MNIST's folder (else $AEVB_DATA_DIR, else download)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_int, default=1, help="time this many epochs (default 1)")
    length.add_argument("--steps", type=positive_int, default=None, help="time this many training steps instead of epochs")
    parser.add_argument("--batch-size", type=positive_int, default=100, help="mini-batch size (default 100)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=positive_int, default=1,
                        help="rounds of every loop timed back to back; rows give medians (default 1)")
    parser.add_argument("--modes", default="eager", type=lambda text: text.split(","),
                        help="comma-separated: eager, compiled (aevb's trainer with torch_compile=True); default eager")
    parser.add_argument("--out", type=Path, default=Path("runs/bench.jsonl"),
                        help="JSON Lines results file, each model's rows appended as it finishes (default runs/bench.jsonl)")
    parser.add_argument("--json", action="store_true", help="print each row as one JSON line too")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.modes or set(args.modes) - {"eager", "compiled"}:
        parser.error(f"--modes takes eager, compiled or both, not {','.join(args.modes)!r}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    sys.path.insert(0, str(Path(__file__).parent))  # the bench_<model> modules, whatever the working folder
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with args.out.open("a") as out:
        for name in args.models.split(","):
            try:
                model_rows = importlib.import_module(f"bench_{name}").time_model(args)
            except Exception as error:  # the other models still run
                traceback.print_exc()
                model_rows = [{"error": f"{type(error).__name__}: {error}"}]
            for row in model_rows:
                row = {"model": name, **row}
                rows.append(row)
                if "error" in row:
                    print(f"{name:<6} failed: {row['error']}", flush=True)
                else:
                    share = (f"   GEMM limit {row['limit_seconds']:8.3f} s: share ours {row['share_of_limit']:.0%}, "
                             f"plain {row['plain_share_of_limit']:.0%}; cold {row['cold_limit_seconds']:8.3f} s: "
                             f"share ours {row['share_of_cold_limit']:.0%}" if "limit_seconds" in row else "")
                    pyro = f"   ours/Pyro {row['ratio_to_pyro']:.3f}" if "ratio_to_pyro" in row else ""
                    print(f"{name:<6} ours {row['ours_seconds']:8.3f} s   plain {row['plain_seconds']:8.3f} s   "
                          f"ratio ours/plain {row['ratio']:.3f}{share}{pyro}   "
                          f"({row['device']}{', compiled' if row['compiled'] else ''})", flush=True)
                if args.json:
                    print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                out.flush()
    print(f"results appended to {args.out}")
    if any("error" in row for row in rows):
        sys.exit(1)
    return rows


if __name__ == "__main__":
    main()
