"""Peak resident memory of a fit on data larger than memory (``aevb.disk``).

A VAE on a float32 ``.npy`` of ``--gigabytes`` on disk, fitted by ``aevb fit`` in a process of its own, whose
peak RSS (``ru_maxrss`` of that process alone, from ``os.wait4``) is printed beside the file's size and the fit's
wall time. The file is written by another process, so that this one stays small: a child's ``ru_maxrss`` counts
the parent it was forked from.

    PYTHONPATH=src python benchmarks/data_on_disk.py [--gigabytes 4] [--folder DIR] [--epochs 1] [--json]

The file is written once into ``--folder`` (default: a temporary folder, removed afterwards), through a
memory-mapped array a chunk at a time, as uniform values in [0, 1) of 784 columns (MNIST's width), under a
temporary name that it takes only when whole: a later run with the same ``--folder`` and ``--gigabytes`` reuses
it, and a ``big.npy`` of another shape there is refused, not replaced.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COLUMNS = 784
CHUNK_ROWS = 50_000


def rows_of(gigabytes: float) -> int:
    return int(gigabytes * 1e9 / (4 * COLUMNS))


def write_array(path: Path, gigabytes: float, seed: int = 0) -> None:
    """A float32 (rows_of(gigabytes), COLUMNS) .npy at ``path`` (10^9 bytes a gigabyte), written a chunk at a time
    into ``path.partial``, which is renamed to ``path`` when whole."""
    rows, partial = rows_of(gigabytes), path.with_name(path.name + ".partial")
    x = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(rows, COLUMNS))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK_ROWS):
        x[start:start + CHUNK_ROWS] = rng.random((min(CHUNK_ROWS, rows - start), COLUMNS), dtype=np.float32)
        x.flush()
    del x
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=4.0, help="size of the array on disk (default 4)")
    parser.add_argument("--folder", type=Path, default=None, help="where the array is written (default: a temporary folder)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the fit (default 1)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    if args.gigabytes <= 0 or args.epochs < 1:
        parser.error("--gigabytes must be positive and --epochs at least 1")
    rows = rows_of(args.gigabytes)
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.folder or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "big.npy"
        if path.is_file():
            try:
                shape = np.load(path, mmap_mode="r").shape
            except ValueError as error:
                parser.error(f"{path} is not a .npy array ({error}): remove it or choose another --folder")
            if shape != (rows, COLUMNS):
                parser.error(f"{path} has shape {shape}, not the ({rows}, {COLUMNS}) of --gigabytes "
                             f"{args.gigabytes:g}: remove it or choose another --folder")
        else:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                pool.apply(write_array, (path, args.gigabytes))
        command = [sys.executable, "-m", "aevb", "fit", "vae", "--dataset", str(path), "--epochs", str(args.epochs),
                   "--iwae", "0", "--no-progress", "--json", "--out", str(Path(temporary) / "run")]
        output = Path(temporary) / "output"
        start = time.perf_counter()
        with output.open("w") as stdout:
            child = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            sys.exit(f"the fit failed: {output.read_text().strip()[-2000:]}")
        summary = json.loads(output.read_text().strip().splitlines()[-1])
        result = {"file_bytes": path.stat().st_size, "rows": rows, "peak_rss_bytes": usage.ru_maxrss * 1024,
                  "wall_seconds": seconds, "steps": summary["steps"], "test_elbo": summary["test_elbo"],
                  "train_seconds": summary["train_seconds"]}
    print(f"file {result['file_bytes'] / 2**30:.2f} GiB ({rows} rows): peak RSS of the fit "
          f"{result['peak_rss_bytes'] / 2**30:.3f} GiB, {result['steps']} steps in {seconds:.0f} s")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
