"""Run directories (config, metrics, summary, checkpoint and figures of one fit, written atomically), and
the device a run uses.

A run is written into a hidden sibling folder and renamed into place only when it is complete, so
a failed or interrupted run never leaves a half-written directory (nor destroys an earlier run).
Checkpoints hold tensors and JSON-able values only, and are read with ``torch.load(weights_only=True)``:
nothing in a run directory is unpickled as code.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from aevb.errors import UsageError
from aevb.model import LatentVariableModel


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON; paths and other non-JSON values are written as strings."""
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path, missing: str):
    """The JSON in ``path``; UsageError (``missing``, or what is wrong with the file) if it cannot be read."""
    if not path.is_file():
        raise UsageError(f"{missing} (no {path.name})")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is damaged: not JSON ({e})") from None


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


def load_checkpoint(path: Path, cls: type[LatentVariableModel]) -> LatentVariableModel:
    """The model of ``cls`` a checkpoint file holds; UsageError, one line, for a missing, damaged or foreign file."""
    if not path.is_file():
        raise UsageError(f"{path.parent} is not a finished aevb run directory (no {path.name})")
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        reason = "it holds code, which aevb never loads" if isinstance(e, pickle.UnpicklingError) else "unreadable"
        raise UsageError(f"{path} is damaged or not an aevb checkpoint ({reason}); fit the run again") from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise UsageError(f"{path} is not an aevb checkpoint (no config and state_dict); fit the run again")
    try:
        return cls.from_checkpoint(checkpoint)
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise UsageError(f"{path} does not fit {cls.__name__} ({first}); fit the run again") from None
