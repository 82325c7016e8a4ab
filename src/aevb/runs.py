"""Run directories: what a fit writes, how it marks them, locks them, and checkpoints them; the device a run uses.

A run directory is visible from the moment training begins. Its marker file ``aevb-run.json`` says that
aevb wrote it and whether it is complete; while it is not, ``checkpoint.pt`` holds what is needed to continue
it exactly (``aevb resume RUN``). Every file is written atomically (a temporary file, synced, then a rename), so
a killed process leaves the previous version of each, never half of one; metrics.jsonl alone is appended a record
at a time, and a resume cuts it back (``keep_lines``) to the records its checkpoint had seen. A run is replaced only when it is
provably aevb's: its marker says so and it holds nothing aevb did not write.

Checkpoints hold tensors and JSON-able values only, and are read with ``torch.load(weights_only=True)``:
nothing in a run directory is unpickled as code. The CRC-32 that ``torch.save`` stores for each entry is checked
first, so that bytes changed on disk are reported, not loaded.
"""
from __future__ import annotations

import errno
import fcntl
import json
import lzma
import os
import pickle
import platform
import re
import shutil
import tempfile
import time
import warnings
import zipfile
import zlib
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

try:  # torch's switch for torch.save's CRC-32s, set per thread by ``patch``: aevb's own files keep them
    from torch.utils.serialization import config as serialization
except ImportError:  # torch 2.4 always writes them (2.5's switch, set_crc32_options, is left as the user set it)
    serialization = None

import aevb
from aevb.arguments import output_problem
from aevb.errors import UsageError
from aevb.model import LatentVariableModel
from aevb.registry import first_line

MARKER = "aevb-run.json"
CHECKPOINT = "checkpoint.pt"
WRITTEN = {MARKER, CHECKPOINT, "config.json", "metrics.jsonl", "summary.json", "model.pt", "provenance.json",
           "samples.png", "diagnostics.json", "diagnostics.png"}  # the files of every run (and what aevb reproduce,
# aevb sample and aevb diagnose add by default)
EVENTS_PREFIX = "events.out.tfevents."  # TensorBoard's event files, written while training
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.\w+)?")  # write_atomically's (mkstemp's 8 characters), left by a kill
REFIT = "fit the run again (delete it first if it is interrupted)"  # what to do about a damaged run


def read_umask() -> int:
    """The process's umask, read the only way there is: by setting it, then setting it back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = read_umask()  # once, at import: a file another thread creates meanwhile sees the real one


def software_versions() -> dict[str, str]:
    """The versions of the software a run used (its device and thread count are in its summary)."""
    return {"aevb": aevb.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform()}


def sync(path: str | Path) -> None:
    """Flush ``path`` (a file or a folder) from the operating system's cache to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write) -> None:
    """``write(temporary_path)``, then rename it to ``path``: ``path`` is the old file or the new one, whole.

    The temporary file ends with ``path``'s suffix, so that writers that go by it (matplotlib, numpy) write that
    format, and gets the permissions of a file created the usual way (0666 less the umask; mkstemp's are 0600).
    The new file is on the disk before the rename, and the rename before this returns, so that a crash of the
    machine (not only of the process) leaves the old file or the new one, not an empty one."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as e:
        e.filename = str(path)  # the file the user knows of, not the temporary one it could not create
        raise
    os.close(fd)
    try:
        os.chmod(temporary, 0o666 & ~UMASK)
        write(Path(temporary))
        sync(temporary)
        os.replace(temporary, path)
    except BaseException as e:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, temporary, Path(temporary)):
            e.filename = str(path)  # the file the user knows of
        raise
    with suppress(OSError):  # the file is written; some file systems cannot sync a folder
        sync(path.parent)


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically; paths and other non-JSON values are written as strings."""
    write_atomically(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def read_json(path: Path, advice: str = REFIT):
    """The JSON in ``path``; UsageError (what is wrong with the file, then ``advice``) if it cannot be read."""
    if not path.is_file():
        raise UsageError(f"no {path}; {advice}")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is damaged (not JSON: {e}); {advice}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); {advice}") from None


def read_jsonl(path: Path) -> list[dict]:
    """The records of the JSON-lines file ``path`` (a run's metrics.jsonl), in order; none where it is absent."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def append_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.flush()


def keep_lines(path: Path, count: int, advice: str) -> None:
    """Keep the first ``count`` records (``is_record``) of the JSON-lines file ``path`` (what a checkpoint had seen),
    atomically. UsageError, ending with ``advice``, if it holds fewer whole records than that: a resumed run would
    lose or garble its history."""
    try:
        lines = path.read_text().splitlines(keepends=True)[:count] if count else []
    except FileNotFoundError:
        lines = []
    except UnicodeDecodeError as e:
        raise UsageError(f"cannot read {path} ({e.reason}); {advice}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); {advice}") from None
    whole = [line for line in lines if line.endswith("\n") and is_record(line)]
    if len(whole) < count:
        raise UsageError(f"{path} is damaged: it holds {len(whole)} whole records of the {count} the checkpoint has "
                         f"seen; {advice}")
    write_atomically(path, lambda p: p.write_text("".join(lines)))


def is_record(text: str) -> bool:
    """Whether a line of metrics.jsonl is a record: a JSON object with a whole-number step and epoch."""
    try:
        record = json.loads(text)
    except ValueError:
        return False
    return isinstance(record, dict) and all(type(record.get(key)) is int for key in ("step", "epoch"))


def status(out: Path, advice: str = "choose another --out") -> str | None:
    """'complete' or 'incomplete' for an aevb run directory, None for a folder that is absent or empty.

    UsageError, ending with ``advice``, for anything else: a file, a folder that aevb did not write (no marker), a
    damaged marker, or one of a run's files that is not a file.
    """
    if out.is_symlink() and not out.exists():
        raise UsageError(f"{out} is a link to {os.readlink(out)}, which does not exist; {advice}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder; {advice}")
    if not out.exists() or not any(out.iterdir()):
        return None
    marker = out / MARKER
    if not marker.is_file():
        raise UsageError(f"{out} exists and is not an aevb run directory (no {MARKER}); {advice}")
    state = read_json(marker, advice)
    if not isinstance(state, dict) or state.get("status") not in ("complete", "incomplete"):
        raise UsageError(f"{marker} is damaged (no status complete or incomplete); {advice}")
    odd = [name for name in sorted(WRITTEN) if (out / name).exists() and not (out / name).is_file()]
    if odd:
        raise UsageError(f"{out / odd[0]} is damaged (not a file); {advice}")
    return state["status"]


def check_removable(out: Path) -> None:
    """UsageError unless ``out`` is a folder of aevb's own files only (the marker lists them), which ``remove_run``
    may delete: never a link (it would delete what it points to, or fail) nor a user's file."""
    if out.is_symlink():
        raise UsageError(f"--out {out} is a link to {os.readlink(out)}; aevb does not replace a run through a link: "
                         "name the folder itself, or choose another --out")
    state = read_json(out / MARKER)
    written = set(state.get("files", [])) | WRITTEN
    foreign = sorted(p.name for p in out.iterdir() if p.name not in written and not p.name.startswith(EVENTS_PREFIX)
                     and not TEMPORARY.fullmatch(p.name))
    if foreign:
        raise UsageError(f"--out {out} holds files aevb did not write ({', '.join(foreign[:3])}); move them or "
                         "choose another --out")


def remove_run(out: Path) -> None:
    """Delete an aevb run directory, refusing if it holds anything aevb did not write (``check_removable``)."""
    check_removable(out)
    try:  # a run is flat: its files go together, or (without write permission in it) none of them
        shutil.rmtree(out)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot remove the run there ({e.strerror}); choose another --out") from None


def snapshot(out: Path) -> dict[str, int]:
    """{name: modification time in ns} of what ``out`` holds (nothing, for a folder not there yet)."""
    return {p.name: p.lstat().st_mtime_ns for p in out.iterdir()} if out.is_dir() else {}  # a link's own time


def mark(out: Path, status: str, before: dict[str, int] | None = None, **extra) -> None:
    """The marker: aevb wrote this folder, its status, and (when complete) the files it wrote: a run's own
    (``WRITTEN``), TensorBoard's, and any other this process wrote, which were not in the ``snapshot`` ``before``
    it began or have changed since (figures of an earlier attempt, drawn again): not a file a user put in the run
    while it was interrupted."""
    def written(p: Path) -> bool:
        return (p.name in WRITTEN or p.name.startswith(EVENTS_PREFIX)
                or (before or {}).get(p.name) != p.lstat().st_mtime_ns)

    files = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name != CHECKPOINT
                   and written(p)) if status == "complete" else []
    write_json(out / MARKER, {"format": "aevb run", "status": status, "updated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                              **({"files": files} if files else {}), **extra})


def add_files(out: Path, names: list[str]) -> None:
    """List ``names`` among the files aevb wrote into the finished run ``out`` (its marker's ``files``), so that a
    run replaced later goes with them: what ``aevb report`` adds to a run."""
    state = read_json(out / MARKER)
    write_json(out / MARKER, {**state, "files": sorted(set(state.get("files", [])) | set(names))})


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """An exclusive lock on the run ``out`` (``.NAME.lock`` in its parent, holding the owner's pid), released and
    removed on exit; a second process fails at once. Parent folders created here and left empty are removed.

    ``out`` is checked first (``arguments.output_problem``): never the working directory or a folder above it,
    never a file."""
    problem = output_problem(out)
    if problem:
        raise UsageError(f"--out {problem}")
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create {out.parent} ({e.strerror})") from None
    target = out.resolve()  # one lock for a run however it is named (through a link too)
    path = target.parent / f".{target.name}.lock"
    try:
        handle = open(path, "a+")
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write in {out.parent} ({e.strerror})") from None
    acquired = False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise UsageError(f"--out {out} is being written by another aevb process (pid {handle.read().strip() or '?'}); "
                             "wait for it or choose another --out") from None
        acquired = True
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        if acquired:
            path.unlink(missing_ok=True)
        handle.close()
        for folder in created:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def save(obj, path: Path) -> None:
    """``torch.save`` with each entry's CRC-32 (``load_file`` checks them, whatever torch's configuration says), a
    failed write (a full disk) raised as the OSError naming ``path`` that Python's own writes raise, not as the
    RuntimeError of torch's C++ writer."""
    try:
        with serialization.patch({"save.compute_crc32": True}) if serialization else nullcontext():
            torch.save(obj, path)
    except RuntimeError as e:
        raise OSError(errno.EIO, f"could not be written ({first_line(e)}; is the disk full?)", str(path)) from e


def save_checkpoint(out: Path, state: dict) -> None:
    write_atomically(out / CHECKPOINT, lambda p: save(state, p))


def save_run(run_dir: Path, model: LatentVariableModel, summary: dict, before: dict[str, int]) -> None:
    """The finished run: ``summary.json`` and the checkpoint ``model.pt``; then it is marked complete, with what
    this process wrote since the ``snapshot`` ``before`` as aevb's, and loses what it no longer needs."""
    write_json(run_dir / "summary.json", summary)
    write_atomically(run_dir / "model.pt", lambda p: save(model.checkpoint(), p))
    mark(run_dir, "complete", before=before)  # before the checkpoint goes: a kill between the two leaves a complete run
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    for p in run_dir.iterdir():  # the temporaries of an earlier process killed while writing
        if TEMPORARY.fullmatch(p.name):
            p.unlink(missing_ok=True)


def load_file(path: Path, advice: str = REFIT) -> dict:
    """A checkpoint file's dict, read with ``weights_only``; UsageError, one line ending with ``advice``, for a
    missing, unreadable or damaged one (an entry whose bytes fail their CRC-32 included)."""
    if not path.is_file():
        raise UsageError(f"no {path}; {advice}")
    try:
        with zipfile.ZipFile(path) as archive:  # a zip with each entry's CRC-32 (``save``); torch.load skips them
            corrupt = archive.testzip()
        if corrupt is not None:
            raise UsageError(f"{path} is damaged (its bytes have changed since they were written: {corrupt} fails "
                             f"its checksum); {advice}")
        with warnings.catch_warnings():  # torch's warnings about a damaged file: it is reported below, in one line
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except PermissionError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); {advice}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, zlib.error,
            lzma.LZMAError) as e:  # the last two: an entry's compression method itself damaged
        code = isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e)  # a class or function
        reason = "it holds code, which aevb never loads" if code else "unreadable"
        raise UsageError(f"{path} is damaged or not an aevb checkpoint ({reason}); {advice}") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"{path} is not an aevb checkpoint (not a dict); {advice}")
    return checkpoint


def load_checkpoint(path: Path, cls: type[LatentVariableModel]) -> LatentVariableModel:
    """The model of ``cls`` a checkpoint file holds; UsageError, one line, for a missing, damaged or foreign file,
    one whose config asks for more than ``aevb.model.MAX_PARAMETERS`` (refused before anything is allocated), or
    one with non-finite weights."""
    checkpoint = load_file(path)
    if not isinstance(checkpoint.get("config"), dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UsageError(f"{path} is not an aevb checkpoint (no config and state_dict); {REFIT}")
    try:
        model = cls.from_checkpoint(checkpoint)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as e:
        raise UsageError(f"{path} does not fit {cls.__name__} ({first_line(e)}); {REFIT}") from None
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise UsageError(f"{path} holds non-finite weights (NaN or infinite); {REFIT}")
    return model
