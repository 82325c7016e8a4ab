"""Where a second CPU thread pays: training steps with torch.set_num_threads(1) against 2, across work sizes.

    PYTHONPATH=src python benchmarks/threads.py [--out threads.jsonl] [--threads 2] [--repeats 5] [--block 0.3] [--only vae] [--large]

For each case (a model, its sizes and a batch size) one model and one ``aevb.trainer.Trainer`` train on
random data of the model's kind (in [0, 1] for the continuous-Bernoulli VAE, binary for the GMVAE and the
VRNN, Gaussian for FA): forward, backward and Adam, as ``aevb fit`` does. The two thread counts alternate
in the same process, 1-2 then 2-1, for ``--repeats`` rounds; each block trains for about ``--block``
seconds (its number of steps is set by a warm-up block with the same thread count). Reported per case: the
median time per step with each count, t2/t1 (the ratio of the medians; below 1: two threads are faster),
the range of the rounds' own ratios, the case's work (``aevb.threads.step_flops``: FLOPs of one ELBO
forward and backward), the one-minute load average when it finished, and what ``default_threads`` picks.
The table is printed, and the whole report is appended to ``--out`` as one JSON line.

On a machine busy with other work the second thread is often not running when the first waits for it at
the end of an operation, so two threads can be many times slower than one. Run it as the machine usually
is, and read the ratio, not the times: the conditions alternate so that both see the same load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aevb.arguments import positive_float, positive_int, thread_count
from aevb.models.fa import FAConfig, FactorAnalysis
from aevb.models.gmvae import GMVAE, GMVAEConfig
from aevb.models.vae import VAE, VAEConfig
from aevb.models.vrnn import VRNN, VRNNConfig
from aevb.threads import THRESHOLD_FLOPS, default_threads, step_flops
from aevb.trainer import Trainer

BATCHES_OF_DATA = 8  # the data hold this many batches: an epoch (and its one record) every 8 steps


@dataclass
class Case:
    name: str
    model: str  # vae, gmvae, vrnn or fa
    batch_size: int
    config: dict = field(default_factory=dict)


def cases(large: bool = False) -> list[Case]:
    grid = [Case(f"vae D={d} h={h} B={b}", "vae", b, dict(data_dim=d, hidden=(h, h)))
            for d in (50, 784) for h in (32, 128, 500) for b in (32, 100, 500)]
    grid += [
        Case("gmvae D=784 h=512,512 C=10 B=100", "gmvae", 100, {}),
        Case("vrnn T=28 D=28 B=100", "vrnn", 100, {}),
        Case("fa D=3 B=32", "fa", 32, {}),
    ]
    if large:  # beyond the models' defaults: where does a second thread pay, if anywhere?
        grid += [Case(f"vae D=784 h={h} B={b}", "vae", b, dict(data_dim=784, hidden=(h, h)))
                 for h, b in ((1000, 500), (1000, 1000), (2000, 1000), (4000, 1000))]
    return grid


def build(case: Case) -> tuple[torch.nn.Module, torch.Tensor]:
    """The case's model (seed 0) and its random data, BATCHES_OF_DATA batches of it."""
    torch.manual_seed(0)
    n = case.batch_size * BATCHES_OF_DATA
    if case.model == "vae":
        model = VAE(VAEConfig(**case.config))
        return model, torch.rand(n, model.config.data_dim)
    if case.model == "gmvae":
        model = GMVAE(GMVAEConfig(**case.config))
        return model, (torch.rand(n, model.config.data_dim) < 0.5).float()
    if case.model == "vrnn":
        model = VRNN(VRNNConfig(**case.config))
        return model, (torch.rand(n, model.config.seq_len, model.config.data_dim) < 0.5).float()
    if case.model == "fa":
        model = FactorAnalysis(FAConfig(**case.config))
        return model, torch.randn(n, model.config.data_dim)
    raise ValueError(case.model)


def seconds_per_step(trainer: Trainer, x: torch.Tensor, threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    trainer.fit((x,), steps=steps)
    return (time.perf_counter() - start) / steps


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def time_case(case: Case, repeats: int, block: float, threads: int, deadline: float) -> dict:
    """Time the case: ``repeats`` rounds, but no more than 2 once ``time.perf_counter()`` passes ``deadline``."""
    model, x = build(case)
    batch = (x[: case.batch_size],)
    trainer = Trainer(model, lr=1e-3, batch_size=case.batch_size, progress=False)
    trainer.fit((x,), steps=1)  # Adam's state, the first-call set-ups
    counts = (1, threads)
    steps = {}
    for n in counts:  # warm-up blocks, which also size the timed ones
        per_step = seconds_per_step(trainer, x, n, 2)
        steps[n] = max(1, min(500, round(block / per_step)))
    times: dict[int, list[float]] = {n: [] for n in counts}
    for round_ in range(repeats):
        if round_ >= 2 and time.perf_counter() > deadline:
            break
        for n in counts if round_ % 2 == 0 else counts[::-1]:
            times[n].append(seconds_per_step(trainer, x, n, steps[n]))
    torch.set_num_threads(threads)
    t1, t2 = statistics.median(times[1]), statistics.median(times[threads])
    round_ratios = [b / a for a, b in zip(times[1], times[threads])]
    flops_started = time.perf_counter()
    flops = step_flops(model, batch)
    flops_seconds = time.perf_counter() - flops_started
    decision_started = time.perf_counter()
    chosen = default_threads(model, batch)
    decision_seconds = time.perf_counter() - decision_started
    return {
        "case": case.name, "model": case.model, "batch_size": case.batch_size, "config": case.config,
        "flops_per_step": flops, "steps_per_block": steps,
        "seconds_per_step": {str(n): times[n] for n in counts},
        "median_seconds_per_step": {"1": t1, str(threads): t2},
        "ratio": t2 / t1, "round_ratios": round_ratios, "rounds": len(round_ratios),
        "default_threads": chosen, "step_flops_seconds": flops_seconds, "default_threads_seconds": decision_seconds,
        "load_average_1min": load_average(),
    }


def suggest_threshold(results: list[dict]) -> dict:
    """The lowest work from which on two threads were faster in every case, and the largest work where they
    were not: the threshold belongs between the two (if the second is below the first)."""
    ordered = sorted(results, key=lambda r: r["flops_per_step"])
    lost = [r for r in ordered if r["ratio"] >= 1]
    largest_loss = lost[-1]["flops_per_step"] if lost else 0.0
    won_above = [r for r in ordered if r["flops_per_step"] > largest_loss]
    return {"largest_flops_where_2_threads_lost": largest_loss,
            "smallest_flops_from_which_2_threads_always_won": won_above[0]["flops_per_step"] if won_above else None,
            "cases_where_2_threads_won": [r["case"] for r in ordered if r["ratio"] < 1]}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    backend = [line.split(":", 1)[1].strip() for line in torch.__config__.parallel_info().splitlines()
               if line.startswith("ATen parallel backend")]
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_default_threads": torch.get_num_threads(), "parallel_backend": backend[0] if backend else "?"}


def load_line() -> str:
    path = Path("/proc/loadavg")
    return path.read_text().strip() if path.exists() else f"{load_average():.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("threads.jsonl"),
                        help="JSON Lines file the report is appended to (default threads.jsonl)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="rounds of 1-thread and 2-thread blocks per case")
    parser.add_argument("--block", type=positive_float, default=0.3, help="seconds of training per timed block")
    parser.add_argument("--threads", type=thread_count, default=2, help="the thread count compared with 1 (default 2)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--large", action="store_true", help="also VAEs larger than any default (h=1000 to 4000)")
    parser.add_argument("--budget", type=positive_float, default=240.0, help=(
        "seconds for the whole run: a case behind this schedule gets 2 rounds, not --repeats "
        "(two threads on a busy machine can be many times slower than their warm-up said)"))
    args = parser.parse_args()
    if args.threads < 2:
        parser.error("compare 1 thread with at least 2 (--threads)")

    started, load_before = time.perf_counter(), load_line()
    print(f"load average before: {load_before}", flush=True)
    header = (f"{'case':34} {'GFLOP/step':>10} {'ms/step 1':>10} {f'ms/step {args.threads}':>10} "
              f"{f't{args.threads}/t1':>7} {'rounds t2/t1':>14} {'load':>5} {'rule':>4}")
    print(header + "\n" + "-" * len(header), flush=True)
    results = []
    chosen = [case for case in cases(args.large) if args.only in case.name]
    for i, case in enumerate(chosen):
        deadline = started + args.budget * (i + 1) / len(chosen)
        r = time_case(case, args.repeats, args.block, args.threads, deadline)
        results.append(r)
        t1, t2 = r["median_seconds_per_step"].values()
        print(f"{r['case']:34} {r['flops_per_step'] / 1e9:10.4f} {1e3 * t1:10.2f} {1e3 * t2:10.2f} "
              f"{r['ratio']:7.2f} {min(r['round_ratios']):6.2f}-{max(r['round_ratios']):<7.2f} "
              f"{r['load_average_1min']:5.2f} {r['default_threads']:4d}", flush=True)
    load_after = load_line()
    suggestion = suggest_threshold(results) if results else {}
    print(f"load average after: {load_after}; {time.perf_counter() - started:.0f} s in all")
    if suggestion:
        print(f"two threads lost up to {suggestion['largest_flops_where_2_threads_lost'] / 1e9:.3g} GFLOP/step; won in: "
              f"{', '.join(suggestion['cases_where_2_threads_won']) or 'no case'}")
    print(f"aevb.threads.THRESHOLD_FLOPS = {THRESHOLD_FLOPS / 1e9:g} GFLOP/step ('rule': default_threads' choice)")
    report = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)},
              "load_average_before": load_before, "load_average_after": load_after,
              "seconds": time.perf_counter() - started, "threshold_flops": THRESHOLD_FLOPS,
              "suggestion": suggestion, "results": results}
    with args.out.open("a") as out:
        out.write(json.dumps(report) + "\n")
    print(f"appended the report to {args.out}")


if __name__ == "__main__":
    main()
