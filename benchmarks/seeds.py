"""One ``aevb fit`` over several seeds, several fits at once, each number summarized as its median and range.

    PYTHONPATH=src python benchmarks/seeds.py --seeds 0-7 --parallel 8 --out runs/seeds/c50 [--epoch E] \\
        [--keys merged_accuracy,test_elbo] -- gmvae --dataset mnist --data-dir DIR --components 50 --compile

Seed S runs ``python -m aevb fit ARGS --seed S --out OUT/seed-S --resume --json --no-progress`` in its own process
(its output added to OUT/seed-S.log), at most ``--parallel`` at a time. ``--resume`` makes the same command safe to
run again, after Ctrl-C too: a finished run is read, not fitted again, and an interrupted one goes on from its
checkpoint. Then, for each key (default: every float in the first run's summary.json; its integers are counts and
settings), the seeds' values and their median, min and max; with ``--epoch E``, the values of each run's
metrics.jsonl record for epoch E instead (e.g. the 20-epoch numbers of 100-epoch fits, the same fits up to then when
no schedule depends on the length). The table goes to the standard output and OUT/seeds.json. Exit 1 if a fit failed
(its log named), 130 after Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from aevb.arguments import positive_int
from aevb.runs import read_jsonl


def parse_seeds(text: str) -> list[int]:
    """'0-2,8' -> [0, 1, 2, 8]."""
    seeds = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def fit(seed: int, fit_args: list[str], out: Path) -> tuple[int, int, float]:
    """Run (or resume, or read) seed ``seed``'s fit into out/seed-S; (seed, exit status, seconds)."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "aevb", "fit", *fit_args, "--seed", str(seed), "--out", str(out / f"seed-{seed}"),
               "--resume", "--json", "--no-progress"]
    with open(out / f"seed-{seed}.log", "a") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    return seed, code, time.perf_counter() - start


def values(run: Path, epoch: int | None) -> dict:
    """A run's numbers: its summary, or its metrics.jsonl record for ``epoch``."""
    if epoch is None:
        return json.loads((run / "summary.json").read_text())
    for record in read_jsonl(run / "metrics.jsonl"):
        if record.get("epoch") == epoch and "test_elbo" in record:
            return record
    raise SystemExit(f"{run / 'metrics.jsonl'} has no evaluated record for epoch {epoch}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2], help="e.g. 0-7 or 0,1,5 (default 0-2)")
    parser.add_argument("--parallel", type=positive_int, default=1, help="fits at once (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs, one seed-S each")
    parser.add_argument("--epoch", type=positive_int, help="read each run's record of this epoch instead of its summary")
    parser.add_argument("--keys", help="comma-separated numbers to summarize (default: all results)")
    parser.add_argument("fit_args", nargs=argparse.REMAINDER, help="-- MODEL [aevb fit flags], without --seed/--out")
    args = parser.parse_args()
    fit_args = args.fit_args[1:] if args.fit_args[:1] == ["--"] else args.fit_args
    if not fit_args or {"--seed", "--out"} & set(fit_args):
        parser.error("give the model and its flags after --, without --seed and --out")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--out {args.out}: {e.strerror}")

    codes = {}
    pool = ThreadPoolExecutor(args.parallel)
    futures = [pool.submit(fit, seed, fit_args, args.out) for seed in args.seeds]
    try:
        for future in as_completed(futures):
            seed, codes[seed], seconds = future.result()
            print(f"seed {seed}: exit {codes[seed]} after {seconds:.0f} s", flush=True)
    except KeyboardInterrupt:  # the fits had the signal too: each stops at its checkpoint
        pool.shutdown(cancel_futures=True)
        codes[None] = 130
    pool.shutdown()
    # a fit stopped by SIGINT or SIGTERM is interrupted, not failed: also where this process ignores SIGINT (started
    # in the background by a shell, which leaves it ignored) and only the fits, which handle it, stopped
    if any(code in (128 + signal.SIGINT, 128 + signal.SIGTERM) for code in codes.values()):
        print("interrupted: the same command resumes the unfinished fits", file=sys.stderr)
        raise SystemExit(130)
    failed = sorted(seed for seed, code in codes.items() if code)
    if failed:
        raise SystemExit(f"fits failed for seeds {failed}: see {args.out}/seed-{failed[0]}.log")

    runs = {seed: values(args.out / f"seed-{seed}", args.epoch) for seed in args.seeds}
    first = runs[args.seeds[0]]
    keys = args.keys.split(",") if args.keys else [key for key, value in first.items() if isinstance(value, float)]
    table = {}
    for key in keys:
        missing = [seed for seed in args.seeds if not isinstance(runs[seed].get(key), (int, float))]
        if missing:
            raise SystemExit(f"seed {missing[0]}'s run has no number {key!r}")
        column = [runs[seed][key] for seed in args.seeds]
        table[key] = {"values": column, "median": statistics.median(column), "min": min(column), "max": max(column)}
        print(f"{key:<26} median {table[key]['median']:.4g} ({table[key]['min']:.4g} to {table[key]['max']:.4g}): "
              + ", ".join(f"{v:.4g}" for v in column))
    (args.out / "seeds.json").write_text(json.dumps({"fit": fit_args, "seeds": args.seeds, "epoch": args.epoch,
                                                     "numbers": table}, indent=1))


if __name__ == "__main__":
    main()
