"""Run directories (config, metrics, summary, checkpoint and figures of one fit, written atomically), and
the device a run uses.

A run is written into a hidden sibling folder and renamed into place only when it is complete, so
a failed or interrupted run never leaves a half-written directory (nor destroys an earlier run).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from aevb.model import LatentVariableModel


class UsageError(Exception):
    """A problem with the user's input (flags, files, data): reported as one line, exit code 2."""


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON; paths and other non-JSON values are written as strings."""
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def append_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


@contextmanager
def run_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder to write a run into; on success it becomes ``out``, on failure it vanishes.

    An existing ``out`` is replaced only if it is itself an aevb run (it holds ``config.json``).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").exists():
        raise UsageError(f"--out {out} exists and is not an aevb run directory; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(trash / out.name)
        staging.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(out)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def save_run(run_dir: Path, model: LatentVariableModel, config: dict, summary: dict) -> None:
    """Write ``config.json``, ``summary.json`` and the checkpoint ``model.pt``."""
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "summary.json", summary)
    torch.save(model.checkpoint(), run_dir / "model.pt")


def load_run(run_dir: str | os.PathLike) -> tuple[LatentVariableModel, dict]:
    """(model in eval mode, config) of a finished run directory."""
    from aevb.models import from_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "model.pt").is_file() or not (run_dir / "config.json").is_file():
        raise UsageError(f"{run_dir} is not a finished aevb run directory (no model.pt / config.json)")
    model = from_checkpoint(torch.load(run_dir / "model.pt", weights_only=True))
    return model.eval(), json.loads((run_dir / "config.json").read_text())
