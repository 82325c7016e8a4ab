"""Kill a fit with SIGKILL in the middle of an epoch, resume it, and compare it with the uninterrupted fit; and
the cost of writing a checkpoint, as a share of an epoch.

    PYTHONPATH=src python benchmarks/kill_and_resume.py --kill-at 900 -- fit vae --dataset mnist \\
        --data-dir ../shared/data/mnist --epochs 3

runs ``aevb ARGS`` three times in fresh processes: uninterrupted into OUT/uninterrupted (timing each checkpoint
write and each epoch), killed just before step --kill-at into OUT/killed, then ``aevb resume OUT/killed``. It
prints whether the parameters, metrics.jsonl and summary (bar its train_seconds) are identical, and the
checkpoint seconds against the epoch seconds, and writes them as JSON to OUT/result.json. OUT (default
runs/kill_and_resume) must not exist yet, or be empty.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from aevb.arguments import positive_int

# Runs `aevb ARGV` in this process, SIGKILLing itself before gradient step AT (0: never), timing checkpoints and
# epochs; prints the timings as JSON on its last line.
HARNESS = """
import json, os, signal, sys, time
from aevb import runs, trainer
from aevb.cli import main
at, argv = int(sys.argv[1]), sys.argv[2:]
save, step = runs.save_checkpoint, trainer.Trainer.step
times = {"checkpoint": [], "epoch_starts": []}
def timed_save(out, state):
    start = time.perf_counter(); save(out, state); times["checkpoint"].append(time.perf_counter() - start)
def timed_step(self, batch, phase):
    if self.step_count + 1 == at:
        os.kill(os.getpid(), signal.SIGKILL)
    if self.position == 0:
        times["epoch_starts"].append(time.perf_counter())
    return step(self, batch, phase)
runs.save_checkpoint, trainer.Trainer.step = timed_save, timed_step
code = main(argv)
print(json.dumps(times))
sys.exit(code)
"""


def aevb(at: int, argv: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", HARNESS, str(at), *argv, "--no-progress"], capture_output=True, text=True)
    return result, time.perf_counter() - start


def same_run(a: Path, b: Path) -> dict[str, bool]:
    states = [torch.load(run / "model.pt", weights_only=True)["state_dict"] for run in (a, b)]
    summaries = [json.loads((run / "summary.json").read_text()) for run in (a, b)]
    for summary in summaries:
        summary.pop("train_seconds")
    return {"parameters": all(torch.equal(states[0][k], states[1][k]) for k in states[0]),
            "metrics": (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text(),
            "summary": summaries[0] == summaries[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-at", type=positive_int, required=True, help="the gradient step to SIGKILL the fit before")
    parser.add_argument("--out", type=Path, default=Path("runs/kill_and_resume"),
                        help="a new or empty folder for the two runs and result.json (default runs/kill_and_resume)")
    parser.add_argument("fit", nargs=argparse.REMAINDER, help="-- then the aevb fit command's arguments (no --out)")
    args = parser.parse_args()
    command = [a for a in args.fit if a != "--"]
    if args.out.exists() and not (args.out.is_dir() and not any(args.out.iterdir())):
        parser.error(f"--out {args.out} exists and is not an empty folder: choose a new one (nothing there is replaced)")
    args.out.mkdir(parents=True, exist_ok=True)
    uninterrupted, killed = args.out / "uninterrupted", args.out / "killed"

    def check(result: subprocess.CompletedProcess, expected: int, what: str) -> None:
        if result.returncode != expected:
            sys.exit(f"{what} exited {result.returncode}, not {expected}: {result.stderr.strip()[-2000:]}")

    first, wall = aevb(0, [*command, "--out", str(uninterrupted)])
    check(first, 0, "the uninterrupted fit")
    times = json.loads(first.stdout.strip().splitlines()[-1])
    epochs = [b - a for a, b in zip(times["epoch_starts"], times["epoch_starts"][1:])]
    second, _ = aevb(args.kill_at, [*command, "--out", str(killed)])
    if second.returncode == 0:
        parser.error(f"the fit ended before step --kill-at {args.kill_at}: choose a step inside it")
    check(second, -signal.SIGKILL, "the fit to kill")
    third, resume_wall = aevb(0, ["resume", str(killed)])
    check(third, 0, "aevb resume")
    result = {"command": command, "kill_at": args.kill_at, "uninterrupted_wall_seconds": wall,
              "resume_wall_seconds": resume_wall, "identical": same_run(uninterrupted, killed),
              "checkpoint_seconds": times["checkpoint"], "epoch_seconds": epochs,
              "checkpoint_share_of_epoch": max(times["checkpoint"]) / min(epochs) if epochs else None}
    print(json.dumps(result, indent=2))
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
