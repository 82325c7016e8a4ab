"""Bad input never gives a traceback and never costs a user a file (issue #12).

Every case below is a bad invocation of ``aevb``, run in this process through ``aevb.cli.main`` in a folder of
its own (also the working directory). Each must end with exit code 2 (130 for an interruption), exactly one line
on stderr, no traceback, nothing left behind in its folder and every file there untouched (names, sizes,
modification times and bytes). Signals and permissions need processes of their own: the tests after the table.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from aevb import runs
from aevb.arguments import MAX_DRAWS, MAX_IWAE_SAMPLES, MAX_LOCAL_STEPS, MAX_SAMPLES, SEED_MAX
from aevb.cli import main
from aevb.data import MAX_PIXEL_LEVELS
from aevb.model import MAX_PARAMETERS
from aevb.trainer import Trainer

TINY = ["--hidden", "4", "--latent-dim", "2", "--epochs", "1", "--batch-size", "10", "--iwae", "2", "--no-progress"]
Setup = Callable[[Path, dict], None]


class Exploit:
    """A pickle that would create ``marker`` when loaded: ``torch.load(weights_only=True)`` must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def noise(size: int) -> bytes:
    """Random bytes, the same in every run."""
    return np.random.default_rng(size).bytes(size)


# Setups: each writes into the case's folder -------------------------------------------------------------------
def write(name: str, content: bytes | str) -> Setup:
    def setup(folder: Path, fitted: dict) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def link(name: str, target: str) -> Setup:
    return lambda folder, fitted: (folder / name).symlink_to(target)


def array(name: str, x) -> Setup:
    return lambda folder, fitted: np.save(folder / name, np.asarray(x))


def arrays(name: str, **xs) -> Setup:
    return lambda folder, fitted: np.savez(folder / name, **xs)


def shards(name: str, **xs) -> Setup:
    """A folder of .npy shards (``aevb.disk``), ``NAME.npy`` for each keyword."""
    def setup(folder: Path, fitted: dict) -> None:
        (folder / name).mkdir()
        for file, x in xs.items():
            np.save(folder / name / f"{file}.npy", x)
    return setup


def folder_with(name: str, *files: str) -> Setup:
    def setup(folder: Path, fitted: dict) -> None:
        (folder / name).mkdir()
        for file in files:
            (folder / name / file).write_text("{}\n" if file.endswith(".json") else "mine\n")
    return setup


def both(*setups: Setup) -> Setup:
    def setup(folder: Path, fitted: dict) -> None:
        for s in setups:
            s(folder, fitted)
    return setup


def a_run(kind: str = "vae", damage: Callable[[Path], None] | None = None) -> Setup:
    """A copy of a fitted run (``kind``: vae, cvae, or an interrupted vae) in ``run``, then damaged."""
    def setup(folder: Path, fitted: dict) -> None:
        shutil.copytree(fitted[kind], folder / "run")
        if damage:
            damage(folder / "run")
    return setup


def put(name: str, content: bytes | str) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(content.encode() if isinstance(content, str) else content)


def truncate(name: str, keep: float) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes((run / name).read_bytes()[:int(keep * (run / name).stat().st_size)])


def flip_bit(name: str) -> Callable[[Path], None]:
    """Flip one bit in the middle of the checkpoint's largest tensor, as a failing disk would: torch loads it."""
    def damage(run: Path) -> None:
        with zipfile.ZipFile(run / name) as archive:
            storages = [entry for entry in archive.infolist() if "/data/" in entry.filename]  # not data.pkl
            largest = max(storages, key=lambda entry: entry.file_size)
        content = bytearray((run / name).read_bytes())
        header = largest.header_offset  # a local header: 30 bytes, ending with the lengths of the name and extra field
        start = header + 30 + int.from_bytes(content[header + 26:header + 28], "little") + int.from_bytes(
            content[header + 28:header + 30], "little")
        content[start + largest.file_size // 2] ^= 1
        (run / name).write_bytes(bytes(content))
    return damage


def deflated(name: str) -> Callable[[Path], None]:
    """Set the compression method of the checkpoint's largest tensor to deflate in the central directory (one bit,
    as a failing disk would): reading it decompresses bytes that were stored as they are."""
    def damage(run: Path) -> None:
        with zipfile.ZipFile(run / name) as archive:
            largest = max((e for e in archive.infolist() if "/data/" in e.filename), key=lambda e: e.file_size)
            at = archive.start_dir  # the central directory: a 46-byte header, then the name, for each entry
        content = bytearray((run / name).read_bytes())
        while content[at + 46:at + 46 + len(largest.filename)] != largest.filename.encode():
            at = content.index(b"PK\x01\x02", at + 1)
        content[at + 10] |= 8  # the method: 0 (stored) -> 8 (deflated)
        (run / name).write_bytes(bytes(content))
    return damage


def edit_checkpoint(name: str, change: Callable[[dict, Path], object]) -> Callable[[Path], None]:
    """Rewrite a checkpoint file of the run with ``change(checkpoint, run)``."""
    def damage(run: Path) -> None:
        checkpoint = torch.load(run / name, weights_only=True)
        torch.save(change(checkpoint, run), run / name)
    return damage


def edit_json(name: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / name).write_text(json.dumps(change(json.loads((run / name).read_text()))))
    return damage


def remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def replaced(d: dict, path: str, value) -> dict:
    """A copy of nested dict ``d`` with ``path`` ("a.b") set to ``value`` (or removed, for ``...``)."""
    d = dict(d)
    *parents, last = path.split(".")
    inner = d
    for key in parents:
        inner[key] = dict(inner[key])
        inner = inner[key]
    if value is ...:
        del inner[last]
    else:
        inner[last] = value
    return d


def model_config(change: dict) -> Callable[[dict, Path], dict]:
    return lambda checkpoint, run: {**checkpoint, "config": {**checkpoint["config"], **change}}


def state(change: Callable[[dict], dict]) -> Callable[[dict, Path], dict]:
    return lambda checkpoint, run: {**checkpoint, "state_dict": change(dict(checkpoint["state_dict"]))}


def reshaped(sd: dict) -> dict:
    key = next(iter(sd))
    return {**sd, key: torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)}


def hostile(checkpoint: dict, run: Path) -> dict:
    return {"config": {}, "state_dict": Exploit(run.parent / "pwned")}


def fa_checkpoint(checkpoint: dict, run: Path) -> dict:
    from aevb.models.fa import FactorAnalysis, FAConfig

    return FactorAnalysis(FAConfig(data_dim=4, latent_dim=2)).checkpoint()


def other_data(run: Path) -> None:
    """The run's data set replaced by one of other examples (5 numbers each, where the model takes 4)."""
    np.save(run.parent / "other.npy", np.c_[X, X[:, :1]])
    edit_json("config.json", lambda c: replaced(c, "args.dataset", str(run.parent / "other.npy")))(run)


def nan_weights(sd: dict) -> dict:
    key = next(iter(sd))
    return {**sd, key: torch.full_like(sd[key], float("nan"))}


# The cases ------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    argv: list[str]
    setup: Setup | None = None
    code: int = 2
    says: str = ""  # a fragment the error line holds (every case of the table names one)
    cwd: str = "."  # the working directory, inside the case's folder (created empty if absent)
    interrupt: tuple[str, str] | None = None  # (module, function) that raises KeyboardInterrupt when called
    outside: tuple[str, ...] = ()  # paths outside the case's folder that must not exist afterwards

    def __str__(self) -> str:
        return self.name


X = np.random.default_rng(0).uniform(size=(60, 4)).astype(np.float32)  # 50 training and 10 test examples
B = (X > 0.5).astype(np.float32)
DATA = both(array("x.npy", X), array("b.npy", B), array("s.npy", B.reshape(60, 2, 2)))
DATASET = {"gmvae": "b.npy", "vrnn": "s.npy"}  # binary vectors, binary images read as sequences; else x.npy
FIT = ["fit", "vae", "--dataset", "x.npy", *TINY]  # a tiny fit, so that a case that is not refused ends quickly


def fit_case(name: str, flags: list[str], says: str = "", setup: Setup | None = None, model: str = "vae") -> Case:
    """``aevb fit MODEL`` on the tiny data with ``flags`` (which come last, so they override the tiny ones)."""
    return Case(f"fit-{model}-{name}", ["fit", model, "--dataset", DATASET.get(model, "x.npy"), *TINY, *flags],
                both(DATA, setup) if setup else DATA, says=says)


def flag_cases(model: str, flag: str, *values: str, says: str = "") -> list[Case]:
    """``--flag value`` for each value; by default the error names the flag (argparse's "argument --flag: ...")."""
    return [fit_case(f"{flag[2:]}={value or 'empty'}", [flag, value], says or flag, model=model) for value in values]


def data_case(name: str, setup: Setup, says: str = "", file: str | None = None, model: str = "vae",
              flags: tuple[str, ...] = ()) -> Case:
    file = file or name
    return Case(f"data-{name}", ["fit", model, "--dataset", file, *TINY, *flags], setup, says=says)


PARSE = [
    Case("no-command", [], says="required: command"),
    Case("unknown-command", ["nonesuch"], says="invalid choice: 'nonesuch'"),
    Case("unknown-top-level-flag", ["--nonesuch"], says="unrecognized arguments: --nonesuch"),
    Case("fit-without-a-model", ["fit"], says="name a model"),
    Case("fit-model-flag-without-value", ["fit", "--model"], says="name a model first"),
    Case("fit-model-equals-empty", ["fit", "--model="], says="unknown model"),
    Case("fit-unknown-model", ["fit", "nonesuch"], says="unknown model"),
    Case("fit-flag-before-model", ["fit", "--epochs", "1"], says="name a model first"),
    Case("fit-model-file-missing", ["fit", "--model", "missing.py:Model"], says="no such file"),
    Case("fit-model-not-a-model", ["fit", "--model", "os:path"], says="not a subclass"),
    Case("fit-model-module-missing", ["fit", "--model", "no_such_module_here:Model"], says="cannot import"),
    Case("fit-model-file-fails", ["fit", "--model", "broken.py:Model"], write("broken.py", "1 / 0\n"), says="fails to import"),
    Case("fit-model-without-config", ["fit", "--model", "m.py:M", "--dataset", "x.npy", *TINY],
         both(DATA, write("m.py", "from aevb.model import LatentVariableModel\nclass M(LatentVariableModel):\n"
                                  "    def sample(self, n): ...\n")), says="M declares no Config"),
    Case("fit-model-without-sample", ["fit", "--model", "m.py:M", "--dataset", "x.npy", *TINY],
         both(DATA, write("m.py", "from dataclasses import dataclass\nfrom aevb.model import LatentVariableModel\n"
                                  "class M(LatentVariableModel):\n    @dataclass\n    class Config:\n"
                                  "        data_dim: int = 4\n")), says="M does not define sample"),
    Case("fit-model-file-syntax", ["fit", "--model", "broken.py:Model"], write("broken.py", "def (:\n"), says="fails to import"),
    Case("fit-model-no-class", ["fit", "--model", "empty.py:Model"], write("empty.py", ""), says="has no Model"),
    Case("fit-unknown-flag", [*FIT, "--nonesuch", "1"], DATA, says="unrecognized"),
    Case("fit-underscored-flag", [*FIT, "--latent_dim", "3"], DATA, says="unrecognized"),
    Case("fit-resume-without-out", [*FIT, "--resume"], DATA, says="--resume needs the --out"),
    Case("eval-without-run", ["eval"], says="required: RUN_DIR"),
    Case("sample-without-run", ["sample"], says="required: RUN_DIR"),
    Case("resume-without-run", ["resume"], says="required: RUN_DIR"),
    Case("reproduce-without-experiment", ["reproduce"], says="required: EXPERIMENT"),
    Case("reproduce-unknown-experiment", ["reproduce", "nonesuch"], says="invalid choice: 'nonesuch'"),
    Case("reproduce-epochs-scale-0", ["reproduce", "fa-1", "--epochs-scale", "0"], says="--epochs-scale"),
    Case("reproduce-epochs-scale-inf", ["reproduce", "fa-1", "--epochs-scale", "inf"], says="--epochs-scale"),
    Case("reproduce-epochs-scale-nan", ["reproduce", "fa-1", "--epochs-scale", "nan"], says="--epochs-scale"),
    Case("reproduce-epochs-scale-negative", ["reproduce", "fa-1", "--epochs-scale", "-1"], says="--epochs-scale"),
    Case("reproduce-epochs-scale-huge", ["reproduce", "fa-1", "--epochs-scale", "1e300"], says="--epochs-scale"),
    Case("reproduce-seed-negative", ["reproduce", "fa-1", "--seed", "-1"], says="--seed"),
    Case("reproduce-diagnose-negative", ["reproduce", "fa-1", "--diagnose", "-1"], says="--diagnose"),
    Case("reproduce-seed-too-large", ["reproduce", "fa-1", "--seed", str(SEED_MAX + 1)], says="--seed"),
    Case("tour-seed-negative", ["tour", "--quick", "--seed", "-1"], says="--seed"),
    Case("tour-seed-text", ["tour", "--quick", "--seed", "x"], says="--seed"),
    Case("reproduce-unknown-dataset", ["reproduce", "vae", "--dataset", "nonesuch", "--out", "r"], says="unknown dataset"),
    Case("reproduce-data-dir-missing", ["reproduce", "vae", "--data-dir", "missing", "--out", "r"], says="no such folder"),
]

FLAGS = [
    *flag_cases("vae", "--epochs", "0", "-1", "x", "1.5", ""),
    *flag_cases("vae", "--steps", "0", "-3", "x"),
    *flag_cases("vae", "--batch-size", "0", "-1", "x"),
    *flag_cases("vae", "--lr", "0", "-1", "inf", "-inf", "nan", "x", ""),
    *flag_cases("vae", "--lr-milestones", "0", "-1", "350,200", "5,5", "x", "1,,2", says="increasing positive epochs"),
    *flag_cases("vae", "--lr-gamma", "0", "-0.5", "1.5", "nan", "inf", says="(0, 1]"),
    *flag_cases("vae", "--seed", "-1", str(SEED_MAX + 1), str(2**64), "x", "1.5"),
    *flag_cases("vae", "--iwae", "-1", str(MAX_IWAE_SAMPLES + 1), "x"),
    *flag_cases("vae", "--schedule", "nonesuch", "alternate:0,5", "alternate:5,0", "alternate:5", "alternate:",
                "alternate:a,b", "alternate:-1,5"),
    *flag_cases("vae", "--estimator", "nonesuch"),
    *flag_cases("vae", "--transform", "nonesuch"),
    *flag_cases("vae", "--clip-grad", "0", "-1", "inf", "nan"),
    *flag_cases("vae", "--threads", "0", "-1", "100000", str(10**12), says="--threads"),
    *flag_cases("vae", "--device", "nonesuch", "cuda:99"),
    *flag_cases("vae", "--checkpoint-every", "0", "0steps", "xsteps", "-1"),
    *flag_cases("vae", "--latent-dim", "0", "-3", says="dimensions must be positive"),
    *flag_cases("vae", "--latent-dim", "x"),
    fit_case("latent-dim-enormous", ["--latent-dim", str(10**12)], f"{MAX_PARAMETERS:,}"),
    *flag_cases("vae", "--hidden", "500,,500", "", "a"),
    *flag_cases("vae", "--hidden", "0", "-5", "4,0", says="dimensions must be positive"),
    fit_case("hidden-enormous", ["--hidden", str(10**11)], f"{MAX_PARAMETERS:,}"),
    fit_case("hidden-enormous-two-layers", ["--hidden", "100000,100000"], f"{MAX_PARAMETERS:,}"),
    *flag_cases("vae", "--dropout", "1", "-0.1", says="dropout must be in [0, 1)"),
    *flag_cases("vae", "--dropout", "nan", "inf"),
    *flag_cases("vae", "--likelihood", "nonesuch"),
    fit_case("gaussian-scale-without-gaussian", ["--gaussian-scale", "1"], "gaussian"),
    *[fit_case(f"gaussian-scale={v}", ["--likelihood", "gaussian", "--gaussian-scale", v],
               "--gaussian-scale" if v in ("nan", "inf") else "scale must be in [1e-6, 1e6]")
      for v in ("0", "-1", "nan", "inf", "1e300", "1e-300")],
    fit_case("batch-size-above-the-training-set", ["--batch-size", "5000"],
             "--batch-size 5000 exceeds the 50 training examples"),
    *flag_cases("gmvae", "--components", "1", "0", "-1", says="at least 2 components"),
    *flag_cases("gmvae", "--components", str(10**11), says=f"{MAX_PARAMETERS:,}"),
    fit_case("components-above-the-training-set", ["--components", "51"], "51 components", model="gmvae"),
    *flag_cases("gmvae", "--temperature", "nan", "inf"),
    *flag_cases("gmvae", "--temperature", "0", "-1", says="temperature must be positive"),
    *flag_cases("gmvae", "--temperature-decay", "0", "nan", "2"),
    *flag_cases("gmvae", "--temperature-min", "0", "nan", "inf"),
    *flag_cases("gmvae", "--estimator", "aevb"),
    *flag_cases("gmvae", "--variant", "nonesuch"),
    fit_case("straight-through-with-the-marginal", ["--straight-through"], "--straight-through", model="gmvae"),
    *flag_cases("vrnn", "--hidden", "0", says="dimensions must be positive"),
    *flag_cases("vrnn", "--hidden", str(10**7), says=f"{MAX_PARAMETERS:,}"),
    *flag_cases("vrnn", "--mlp-dim", "0", says="dimensions must be positive"),
    *flag_cases("vrnn", "--mlp-dim", str(10**11), says="overflow int64"),
    fit_case("vectors-are-not-sequences", ["--dataset", "b.npy"], "shape (T, D)", model="vrnn"),
    *flag_cases("cvae", "--variant", "nonesuch"),
    fit_case("no-labels", [], "no labels", model="cvae"),
    Case("fit-fa-experiment-3", ["fit", "fa", "--experiment", "3", "--no-progress"], says="--experiment"),
    Case("fit-fa-latent-dim-above-data-dim", ["fit", "fa", "--latent-dim", "4", "--no-progress"], says="between 1 and"),
    Case("fit-fa-latent-dim-0", ["fit", "fa", "--latent-dim", "0", "--no-progress"], says="between 1 and"),
    Case("fit-fa-posterior", ["fit", "fa", "--posterior", "nonesuch"], says="--posterior"),
    Case("fit-fa-constant-column", ["fit", "fa", "--dataset", "c.npy", "--latent-dim", "1", "--no-progress"],
         array("c.npy", np.c_[X[:, :2], np.ones(60)]), says="constant"),
]

OBJECTS = np.array([{"a": 1}] * 60, dtype=object).reshape(60, 1)
DATASETS = [
    data_case("uint8-pixels-of-17-levels", array("u8.npy", (X * 16).round().astype(np.uint8)),
              "leaves every training pixel 0", file="u8.npy", model="gmvae"),
    data_case("missing.npy", None, "no such file"),
    data_case("x.txt", write("x.txt", "1,2\n"), "unknown dataset"),
    data_case("folder.npy", lambda f, r: (f / "folder.npy").mkdir(), "holds none"),
    data_case("random.npy", write("random.npy", noise(500)), "cannot read"),
    data_case("truncated.npy", lambda f, r: (np.save(f / "t.npy", X), (f / "truncated.npy").write_bytes(
        (f / "t.npy").read_bytes()[:300]), (f / "t.npy").unlink()), "cannot read"),
    data_case("empty.npy", write("empty.npy", b""), "cannot read"),
    data_case("nan.npy", array("nan.npy", np.where(X > 0.9, np.nan, X)), "NaN"),
    data_case("inf.npy", array("inf.npy", np.where(X > 0.9, np.inf, X)), "NaN or infinite"),
    data_case("one-dimensional.npy", array("one-dimensional.npy", X[:, 0]), "shape"),
    data_case("four-dimensional.npy", array("four-dimensional.npy", X.reshape(60, 2, 2, 1)), "shape"),
    data_case("objects.npy", lambda f, r: np.save(f / "objects.npy", OBJECTS, allow_pickle=True), "cannot read"),
    data_case("complex.npy", array("complex.npy", X + 1j), "real numbers"),
    data_case("bool.npy", array("bool.npy", X > 0.5), "real numbers"),
    data_case("strings.npy", array("strings.npy", X.astype(str)), "real numbers"),
    data_case("no-rows.npy", array("no-rows.npy", X[:0]), "no examples"),
    data_case("no-columns.npy", array("no-columns.npy", X[:, :0]), "examples of the data are empty"),
    data_case("one-row.npy", array("one-row.npy", X[:1]), "at least 2"),
    data_case("huge-integers.npy", array("huge-integers.npy", (X * 2**62).astype(np.int64)), f"{MAX_PIXEL_LEVELS - 1}"),
    data_case("large-integers.npy", array("large-integers.npy", (X * 2**20).astype(np.int32)), f"{MAX_PIXEL_LEVELS - 1}"),
    data_case("negative-integers.npy", array("negative-integers.npy", (X * 10 - 5).astype(np.int64)), ">= 0"),
    data_case("values-above-one.npy", array("values-above-one.npy", X * 5), "[0, 1]"),
    data_case("non-binary.npy", array("non-binary.npy", X), "exactly 0 or 1", flags=("--likelihood", "bernoulli")),
    data_case("non-binary-gmvae.npy", array("non-binary-gmvae.npy", X), "or static-binarize for values in [0, 1])",
              model="gmvae"),  # no ", or use --likelihood cb": the GMVAE has no --likelihood
    data_case("dynamic-binarize.npy", array("dynamic-binarize.npy", X * 5), "[0, 1]",
              flags=("--transform", "dynamic-binarize")),
    data_case("static-binarize.npy", array("static-binarize.npy", X * 5), "[0, 1]",
              flags=("--transform", "static-binarize", "--likelihood", "bernoulli")),
    data_case("wrong-keys.npz", arrays("wrong-keys.npz", a=X, b=X), "'x'"),
    data_case("extra-key.npz", arrays("extra-key.npz", x=X, z=X), "unexpected"),
    data_case("no-arrays.npz", arrays("no-arrays.npz"), "'x'"),
    data_case("labels-too-few.npz", arrays("labels-too-few.npz", x=X, y=np.zeros(5, int)), "one label per example"),
    data_case("labels-fractional.npz", arrays("labels-fractional.npz", x=X, y=np.full(60, 0.5)), "integer class"),
    data_case("labels-negative.npz", arrays("labels-negative.npz", x=X, y=-np.ones(60, int)), "integer class"),
    data_case("labels-nan.npz", arrays("labels-nan.npz", x=X, y=np.full(60, np.nan)), "integer class"),
    data_case("labels-text.npz", arrays("labels-text.npz", x=X, y=np.array(["a"] * 60)), "integer class"),
    data_case("labels-past-int64.npz", arrays("labels-past-int64.npz", x=X, y=np.r_[1e19, np.zeros(59)]), "integer class"),
    data_case("labels-from-one.npz", arrays("labels-from-one.npz", x=X, y=1 + np.arange(60) % 3), "have no class 0"),
    data_case("labels-stray.npz", arrays("labels-stray.npz", x=X, y=np.r_[100_000, np.arange(59) % 3]), "no class 3"),
    data_case("labels-test-only.npz", arrays("labels-test-only.npz", x=X, y=np.arange(60) % 2, x_test=X[:10],
                                             y_test=np.arange(10) % 3), "class 2, which no training example has"),
    data_case("y-test-without-x-test.npz", arrays("y-test-without-x-test.npz", x=X, y_test=np.zeros(60, int)), "y_test"),
    data_case("x-test-other-shape.npz", arrays("x-test-other-shape.npz", x=X, x_test=X[:, :3]), "x_test"),
    data_case("x-test-nan.npz", arrays("x-test-nan.npz", x=X, x_test=X * np.nan), "NaN"),
    data_case("x-test-without-y-test.npz", arrays("x-test-without-y-test.npz", x=X, y=np.zeros(60, int), x_test=X),
              "labels for both"),
    data_case("random.npz", write("random.npz", noise(500)), "cannot read"),
    data_case("not-arrays.npz", lambda f, r: zipfile.ZipFile(f / "not-arrays.npz", "w").writestr("x.npy", "text"),
              "cannot read"),
    data_case("text.csv", write("text.csv", "a,b\nc,d\n"), "line 2, column 1 holds 'c', not a number"),
    data_case("empty.csv", write("empty.csv", ""), "no examples"),
    data_case("ragged.csv", write("ragged.csv", "1,2\n3\n"), "line 2 has 1 value but line 1 has 2"),
    data_case("nan.csv", write("nan.csv", "0.1,nan\n0.2,0.3\n"), "NaN"),
    data_case("one-class.npz", arrays("one-class.npz", x=X, y=np.zeros(60, int)), "at least 2 classes", model="cvae"),
    data_case("shards-empty", lambda f, r: (f / "shards-empty").mkdir(), "holds none"),
    data_case("shards-other-types", shards("shards-other-types", a=X, b=X.astype(np.float64)), "rows alike"),
    data_case("shards-other-shapes", shards("shards-other-shapes", a=X, b=X[:, :3]), "rows alike"),
    data_case("shards-nan", shards("shards-nan", a=X, b=np.where(X > 0.9, np.nan, X)), f"b.npy: row {int(np.argmax((X > 0.9).any(1)))} contains NaN"),
    data_case("shards-fortran", shards("shards-fortran", a=np.asfortranarray(X)), "Fortran order"),
    data_case("shards-random", both(shards("shards-random", a=X), write("shards-random/b.npy", noise(500))),
              "cannot read"),
    data_case("shards-one-row", shards("shards-one-row", a=X[:1]), "at least 2"),
    data_case("shards-strings", shards("shards-strings", a=X.astype(str)), "real numbers"),
    data_case("shards-above-one", shards("shards-above-one", a=X, b=X * 5), "[0, 1]"),
    data_case("shards-non-binary", shards("shards-non-binary", a=X), "exactly 0 or 1", flags=("--likelihood", "bernoulli")),
    data_case("shards-static-binarize", shards("shards-static-binarize", a=X), "dynamic-binarize",
              flags=("--transform", "static-binarize", "--likelihood", "bernoulli")),
    Case("data-shards-fa", ["fit", "fa", "--dataset", "shards-fa", "--epochs", "1", "--no-progress"],
         shards("shards-fa", a=X), says="standardizes its training data in memory"),
    data_case("idx:missing", None, "no such folder"),
    data_case("idx:empty", lambda f, r: (f / "empty").mkdir(), "no train-images"),
    data_case("idx:corrupt", lambda f, r: [write(f"corrupt/{n}", noise(100))(f, r) for n in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")],
              "not an IDX file"),
    data_case("nonesuch", None, "unknown dataset"),
    Case("data-data-dir-with-digits", ["fit", "vae", "--dataset", "digits", "--data-dir", ".", *TINY], says="--data-dir"),
    Case("data-mnist-data-dir-missing", ["fit", "vae", "--dataset", "mnist", "--data-dir", "missing", *TINY],
         says="no such folder"),
]

OUTPUTS = [
    Case("out-dot", [*FIT, "--out", "."], DATA, says="current folder"),
    Case("out-dot-in-an-empty-folder", ["fit", "vae", "--dataset", "../x.npy", *TINY, "--out", "."], DATA,
         says="current folder", cwd="empty"),
    Case("out-empty-in-an-empty-folder", ["fit", "vae", "--dataset", "../x.npy", *TINY, "--out", ""], DATA,
         says="current folder", cwd="empty"),
    Case("out-dot-dot", [*FIT, "--out", ".."], DATA, says="current folder"),
    Case("out-root", [*FIT, "--out", "/"], DATA, says="current folder"),
    Case("out-dot-slash-dot-dot-of-a-subfolder", [*FIT, "--out", "sub/.."], both(DATA, folder_with("sub")),
         says="current folder"),
    Case("out-a-file", [*FIT, "--out", "mine.txt"], both(DATA, write("mine.txt", "mine\n")), says="is a file"),
    Case("out-a-link-to-nowhere", [*FIT, "--out", "gone"], both(DATA, link("gone", "nowhere")),
         says="gone is a link to nowhere, which does not exist"),
    Case("sample-out-the-users-data", ["sample", "run", "--out", "x.npy"], both(DATA, a_run()), says="exists"),
    Case("sample-out-an-existing-figure", ["sample", "run", "--out", "mine.png"],
         both(a_run(), write("mine.png", "mine\n")), says="pass --overwrite"),
    Case("sample-out-a-link", ["sample", "run", "--out", "link.png"],
         both(a_run(), write("mine.png", "mine\n"), link("link.png", "mine.png")), says="exists"),
    Case("out-dev-null", [*FIT, "--out", "/dev/null"], DATA, says="is a file", outside=("/dev/.null.lock",)),
    Case("out-under-a-file", [*FIT, "--out", "mine.txt/run"], both(DATA, write("mine.txt", "mine\n")), says="mine.txt"),
    Case("out-name-too-long", [*FIT, "--out", "x" * 300], DATA, says="--out"),
    Case("out-a-folder-of-mine", [*FIT, "--out", "mine"], both(DATA, folder_with("mine", "notes.txt")),
         says="not an aevb run directory"),
    Case("out-a-folder-with-a-config-json", [*FIT, "--out", "mine"], both(DATA, folder_with("mine", "config.json")),
         says="not an aevb run directory"),
    Case("out-a-look-alike-run", [*FIT, "--out", "mine"],
         both(DATA, folder_with("mine", "config.json", "summary.json", "metrics.jsonl")), says="not an aevb run directory"),
    Case("out-a-run-holding-a-file-of-mine", [*FIT, "--out", "run"],
         both(DATA, a_run(damage=put("notes.txt", "mine\n"))), says="notes.txt"),
    Case("out-an-interrupted-run", [*FIT, "--out", "run"], both(DATA, a_run("interrupted")), says="--resume"),
    Case("out-a-run-with-a-damaged-marker", [*FIT, "--out", "run"], both(DATA, a_run(damage=put("aevb-run.json", "{"))),
         says="aevb-run.json"),
    Case("out-a-run-whose-marker-has-no-status", [*FIT, "--out", "run"],
         both(DATA, a_run(damage=put("aevb-run.json", "{}"))), says="aevb-run.json"),
    Case("out-a-run-whose-marker-is-a-list", [*FIT, "--out", "run"],
         both(DATA, a_run(damage=put("aevb-run.json", "[]"))), says="aevb-run.json"),
    Case("tour-out-a-file", ["tour", "--quick", "--out", "mine.txt", "--no-progress"], write("mine.txt", "mine\n"),
         says="mine.txt"),
    Case("tour-out-dot", ["tour", "--quick", "--out", ".", "--no-progress"], says="current folder"),
    Case("reproduce-out-dev-null", ["reproduce", "fa-1", "--out", "/dev/null"], says="/dev/null",
         outside=("/dev/fa-1", "/dev/.fa-1.lock")),
    Case("sample-out-unsupported-suffix", ["sample", "run", "--out", "x.txt"], a_run(), says=".png"),
    Case("sample-out-no-suffix", ["sample", "run", "--out", "x"], a_run(), says=".png"),
    Case("sample-out-empty", ["sample", "run", "--out", ""], a_run(), says=".png"),
    Case("sample-out-dev-null", ["sample", "run", "--out", "/dev/null"], a_run(), says=".png"),
    Case("sample-out-missing-folder", ["sample", "run", "--out", "missing/x.png"], a_run(), says="no folder"),
    Case("sample-out-a-folder", ["sample", "run", "--out", "pictures.png"], both(a_run(), folder_with("pictures.png")),
         says="is a folder"),
    Case("sample-out-under-a-file", ["sample", "run", "--out", "mine.txt/x.png"], both(a_run(), write("mine.txt", "mine")),
         says="no folder"),
]


def run_cases(command: list[str], kind: str = "vae") -> list[Case]:
    """One case per way of damaging a finished run, for ``aevb COMMAND run``."""
    name = "-".join([*command, *([kind] if kind != "vae" else [])])
    damages = {
        "model-pt-random-bytes": (put("model.pt", noise(2000)), "model.pt"),
        "model-pt-truncated": (truncate("model.pt", 0.5), "model.pt"),
        "model-pt-one-bit-flipped": (flip_bit("model.pt"), "checksum"),
        "model-pt-compression-flipped": (deflated("model.pt"), "model.pt is damaged"),
        "model-pt-header-only": (truncate("model.pt", 0.02), "model.pt"),
        "model-pt-empty": (put("model.pt", b""), "model.pt"),
        "model-pt-hostile-pickle": (edit_checkpoint("model.pt", hostile), "holds code"),
        "model-pt-plain-pickle": (lambda run: torch.save({"a": Exploit}, run / "model.pt"), "model.pt"),
        "model-pt-a-folder": (lambda run: ((run / "model.pt").unlink(), (run / "model.pt").mkdir()), "model.pt"),
        "model-pt-missing": (remove("model.pt"), "model.pt"),
        "model-pt-a-list": (lambda run: torch.save([1, 2], run / "model.pt"), "model.pt"),
        "model-pt-no-config": (edit_checkpoint("model.pt", lambda c, r: {"state_dict": c["state_dict"]}), "model.pt"),
        "model-pt-of-another-model": (edit_checkpoint("model.pt", fa_checkpoint), "model.pt"),
        "model-pt-wrong-shapes": (edit_checkpoint("model.pt", state(reshaped)), "model.pt"),
        "model-pt-missing-weights": (edit_checkpoint("model.pt", state(lambda sd: dict(list(sd.items())[1:]))), "model.pt"),
        "model-pt-extra-weights": (edit_checkpoint("model.pt", state(lambda sd: {**sd, "extra": torch.zeros(1)})), "model.pt"),
        "model-pt-nan-weights": (edit_checkpoint("model.pt", state(nan_weights)), "model.pt"),
        "model-pt-state-not-a-dict": (edit_checkpoint("model.pt", lambda c, r: {**c, "state_dict": [1]}), "model.pt"),
        "model-pt-config-not-a-dict": (edit_checkpoint("model.pt", lambda c, r: {**c, "config": [1]}), "model.pt"),
        "model-pt-unknown-config-field": (edit_checkpoint("model.pt", model_config({"nonesuch": 1})), "model.pt"),
        "model-pt-enormous-latent": (edit_checkpoint("model.pt", model_config({"latent_dim": 10**12})), f"{MAX_PARAMETERS:,}"),
        "model-pt-enormous-hidden": (edit_checkpoint("model.pt", model_config({"hidden": [10**11]})), f"{MAX_PARAMETERS:,}"),
        "model-pt-negative-hidden": (edit_checkpoint("model.pt", model_config({"hidden": [-5]})), "model.pt"),
        "config-not-json": (put("config.json", "{"), "config.json"),
        "config-binary": (put("config.json", noise(100) + b"\xff"), "config.json"),
        "config-empty-object": (put("config.json", "{}"), "config.json"),
        "config-a-list": (put("config.json", "[]"), "config.json"),
        "config-null": (put("config.json", "null"), "config.json"),
        "config-a-folder": (lambda run: ((run / "config.json").unlink(), (run / "config.json").mkdir()), "config.json"),
        "config-missing": (remove("config.json"), "config.json"),
        "config-unknown-model": (edit_json("config.json", lambda c: {**c, "model": "nonesuch"}), "unknown model"),
        "config-model-not-a-model": (edit_json("config.json", lambda c: {**c, "model": "os:system"}), "not a subclass"),
        "config-model-a-number": (edit_json("config.json", lambda c: {**c, "model": 7}), "config.json"),
        "config-args-a-list": (edit_json("config.json", lambda c: {**c, "args": []}), "config.json"),
        "config-args-empty": (edit_json("config.json", lambda c: {**c, "args": {}}), "config.json"),
        "config-args-unknown-flag": (edit_json("config.json", lambda c: replaced(c, "args.nonesuch", 1)),
                                     "unknown nonesuch"),
        "config-args-seed-text": (edit_json("config.json", lambda c: replaced(c, "args.seed", "x")), "config.json"),
        "config-args-seed-negative": (edit_json("config.json", lambda c: replaced(c, "args.seed", -1)), "config.json"),
        "config-args-schedule-bad": (edit_json("config.json", lambda c: replaced(c, "args.schedule", "x")), "config.json"),
        "config-args-iwae-list": (edit_json("config.json", lambda c: replaced(c, "args.iwae", [1])), "config.json"),
        "config-data-missing": (edit_json("config.json", lambda c: replaced(c, "data", ...)), "config.json"),
        "config-data-range-reversed": (edit_json("config.json", lambda c: replaced(c, "data.range", [1, 0])), "config.json"),
        "config-data-range-text": (edit_json("config.json", lambda c: replaced(c, "data.range", "0,1")), "config.json"),
        "config-data-test-sha256-a-number": (edit_json("config.json", lambda c: replaced(c, "data.test_sha256", 7)),
                                             "test_sha256 is not a SHA-256"),
        "config-data-test-sha256-short": (edit_json("config.json", lambda c: replaced(c, "data.test_sha256", "abc")),
                                          "test_sha256 is not a SHA-256"),
        "config-data-standardization-huge": (edit_json("config.json", lambda c: replaced(
            c, "data.standardization", {"mean": [0.0] * 64, "std": [1e300] * 64})), "its data's standardization"),
        "config-data-standardization-true": (edit_json("config.json", lambda c: replaced(
            c, "data.standardization", {"mean": [True] * 64, "std": [True] * 64})), "its data's standardization"),
        "config-data-standardization-short": (edit_json("config.json", lambda c: replaced(
            c, "data.standardization", {"mean": [0.0], "std": [1.0]})), "its data's standardization"),
        "config-data-standardization-std-0": (edit_json("config.json", lambda c: replaced(
            c, "data.standardization", {"mean": [0.0] * 64, "std": [0.0] * 64})), "its data's standardization"),
        "config-disagrees-with-model-pt": (edit_json("config.json", lambda c: replaced(c, "config.latent_dim", 3)),
                                           "config.json"),
        "config-dataset-gone": (edit_json("config.json", lambda c: replaced(c, "args.dataset", "/nonesuch/x.npy")),
                                "no such file"),
        "config-dataset-replaced": (other_data, "has changed since"),
        "marker-not-json": (put("aevb-run.json", "{"), "aevb-run.json"),
        "marker-binary": (put("aevb-run.json", b"\xff\xfe"), "aevb-run.json"),
        "marker-a-list": (put("aevb-run.json", "[]"), "aevb-run.json"),
        "marker-no-status": (put("aevb-run.json", "{}"), "aevb-run.json"),
        "marker-unknown-status": (edit_json("aevb-run.json", lambda m: {**m, "status": "weird"}), "aevb-run.json"),
        "marker-missing": (remove("aevb-run.json"), "aevb-run.json"),
        "marker-says-incomplete": (edit_json("aevb-run.json", lambda m: {**m, "status": "incomplete"}), "aevb resume"),
    }
    if command[0] == "sample":  # it draws from the model alone: the data may have gone or changed
        del damages["config-dataset-gone"], damages["config-dataset-replaced"]
    return [Case(f"{name}-{damage}", [*command, "run"], a_run(kind, fn), says=says)
            for damage, (fn, says) in damages.items()]


RUN_ARGS = [
    Case("eval-missing-run", ["eval", "missing"], says="no such run directory"),
    Case("eval-a-file", ["eval", "mine.txt"], write("mine.txt", "mine"), says="mine.txt is a file"),
    Case("eval-an-empty-folder", ["eval", "empty"], folder_with("empty"), says="an empty folder"),
    Case("eval-a-folder-of-mine", ["eval", "mine"], folder_with("mine", "config.json", "model.pt"),
         says="not an aevb run directory"),
    Case("eval-iwae-0", ["eval", "run", "--iwae", "0"], a_run(), says="--iwae"),
    Case("eval-iwae-negative", ["eval", "run", "--iwae", "-1"], a_run(), says="--iwae"),
    Case("eval-iwae-above-the-bound", ["eval", "run", "--iwae", str(MAX_IWAE_SAMPLES + 1)], a_run(), says="--iwae"),
    Case("eval-iwae-text", ["eval", "run", "--iwae", "x"], a_run(), says="--iwae"),
    Case("eval-refine-negative", ["eval", "run", "--refine", "-1"], a_run(), says="--refine"),
    Case("eval-refine-text", ["eval", "run", "--refine", "x"], a_run(), says="--refine"),
    Case("eval-refine-above-the-bound", ["eval", "run", "--refine", str(MAX_LOCAL_STEPS + 1)], a_run(),
         says=f"{MAX_LOCAL_STEPS:,}"),
    Case("diagnose-missing-run", ["diagnose", "missing"], says="no such run directory"),
    Case("diagnose-interrupted-run", ["diagnose", "run"], a_run("interrupted"), says="aevb resume"),
    Case("diagnose-examples-0", ["diagnose", "run", "--examples", "0"], a_run(), says="--examples"),
    Case("diagnose-iwae-0", ["diagnose", "run", "--iwae", "0"], a_run(), says="--iwae"),
    Case("diagnose-steps-negative", ["diagnose", "run", "--steps", "-2"], a_run(), says="--steps"),
    Case("diagnose-steps-above-the-bound", ["diagnose", "run", "--steps", str(MAX_LOCAL_STEPS + 1)], a_run(),
         says=f"{MAX_LOCAL_STEPS:,}"),
    Case("diagnose-samples-0", ["diagnose", "run", "--samples", "0"], a_run(), says="--samples"),
    Case("diagnose-samples-above-the-bound", ["diagnose", "run", "--samples", str(MAX_DRAWS + 1)], a_run(),
         says=f"{MAX_DRAWS:,}"),
    Case("diagnose-eval-samples-0", ["diagnose", "run", "--eval-samples", "0"], a_run(), says="--eval-samples"),
    Case("diagnose-lr-0", ["diagnose", "run", "--lr", "0"], a_run(), says="--lr"),
    Case("diagnose-lr-nan", ["diagnose", "run", "--lr", "nan"], a_run(), says="--lr"),
    Case("diagnose-seed-negative", ["diagnose", "run", "--seed", "-1"], a_run(), says="--seed"),
    Case("sample-missing-run", ["sample", "missing"], says="no such run directory"),
    Case("sample-n-0", ["sample", "run", "--n", "0"], a_run(), says="--n"),
    Case("sample-n-negative", ["sample", "run", "--n", "-1"], a_run(), says="--n"),
    Case("sample-n-above-the-bound", ["sample", "run", "--n", str(MAX_SAMPLES + 1)], a_run(), says="--n"),
    Case("sample-label-of-an-unconditional-model", ["sample", "run", "--label", "0"], a_run(), says="conditional"),
    Case("sample-label-too-large", ["sample", "run", "--label", "99"], a_run("cvae"), says="not a class"),
    Case("sample-label-negative", ["sample", "run", "--label", "-1"], a_run("cvae"), says="not a class"),
    Case("sample-label-text", ["sample", "run", "--label", "x"], a_run("cvae"), says="--label"),
    Case("sample-seed-negative", ["sample", "run", "--seed", "-1"], a_run(), says="--seed"),
    Case("sample-seed-too-large", ["sample", "run", "--seed", str(SEED_MAX + 1)], a_run(), says="--seed"),
    Case("resume-missing-run", ["resume", "missing"], says="missing"),
    Case("resume-a-file", ["resume", "mine.txt"], write("mine.txt", "mine"), says="mine.txt"),
    Case("resume-a-folder-of-mine", ["resume", "mine"], folder_with("mine", "config.json"), says="not an aevb run"),
]

RESUMES = [
    Case(f"resume-{name}", ["resume", "run"], a_run("interrupted", damage), says=says) for name, damage, says in [
        ("checkpoint-random-bytes", put("checkpoint.pt", noise(2000)), "checkpoint.pt"),
        ("checkpoint-truncated", truncate("checkpoint.pt", 0.5), "checkpoint.pt"),
        ("checkpoint-one-bit-flipped", flip_bit("checkpoint.pt"), "checksum"),
        ("checkpoint-empty", put("checkpoint.pt", b""), "checkpoint.pt"),
        ("checkpoint-hostile-pickle", edit_checkpoint("checkpoint.pt", hostile), "holds code"),
        ("checkpoint-a-list", lambda run: torch.save([1], run / "checkpoint.pt"), "checkpoint.pt"),
        ("checkpoint-no-trainer", edit_checkpoint("checkpoint.pt", lambda c, r: replaced(c, "trainer", ...)),
         "checkpoint.pt"),
        ("checkpoint-no-model", edit_checkpoint("checkpoint.pt", lambda c, r: replaced(c, "model", ...)), "checkpoint.pt"),
        ("checkpoint-wrong-shapes", edit_checkpoint("checkpoint.pt", lambda c, r: {
            **c, "model": {**c["model"], "state_dict": reshaped(c["model"]["state_dict"])}}), "checkpoint.pt"),
        ("checkpoint-of-another-model", edit_checkpoint("checkpoint.pt", lambda c, r: {
            **c, "model": fa_checkpoint(c, r)}), "checkpoint.pt"),
        ("checkpoint-optimizers-missing", edit_checkpoint("checkpoint.pt", lambda c, r: {
            **c, "trainer": {**c["trainer"], "optimizers": {}}}), "checkpoint.pt"),
        ("checkpoint-step-text", edit_checkpoint("checkpoint.pt", lambda c, r: {
            **c, "trainer": {**c["trainer"], "step": "x"}}), "checkpoint.pt"),
        ("checkpoint-rng-wrong", edit_checkpoint("checkpoint.pt", lambda c, r: {
            **c, "trainer": {**c["trainer"], "rng": torch.zeros(3)}}), "checkpoint.pt"),
        ("checkpoint-progress-missing", edit_checkpoint("checkpoint.pt", lambda c, r: replaced(c, "progress", ...)),
         "checkpoint.pt"),
        ("checkpoint-software-a-number", edit_checkpoint("checkpoint.pt", lambda c, r: replaced(
            c, "progress.software", 3)), "its software is 3"),
        ("checkpoint-a-folder", lambda run: ((run / "checkpoint.pt").unlink(), (run / "checkpoint.pt").mkdir()),
         "checkpoint.pt"),
        ("config-not-json", put("config.json", "{"), "config.json"),
        ("config-empty-object", put("config.json", "{}"), "config.json"),
        ("config-a-list", put("config.json", "[]"), "config.json"),
        ("config-unknown-model", edit_json("config.json", lambda c: {**c, "model": "nonesuch"}), "unknown model"),
        ("config-args-empty", edit_json("config.json", lambda c: {**c, "args": {}}), "config.json"),
        ("config-args-lr-text", edit_json("config.json", lambda c: replaced(c, "args.lr", "x")), "config.json"),
        ("config-enormous-hidden", edit_json("config.json", lambda c: replaced(c, "args.config_hidden", [10**11])),
         "parameters"),
        ("marker-not-json", put("aevb-run.json", "{"), "aevb-run.json"),
        ("marker-no-status", put("aevb-run.json", "{}"), "aevb-run.json"),
        ("marker-missing", remove("aevb-run.json"), "aevb-run.json"),
        ("metrics-a-folder", lambda run: ((run / "metrics.jsonl").unlink(), (run / "metrics.jsonl").mkdir()),
         "metrics.jsonl"),
        # the history the checkpoint has seen, cut short or lost: resuming would garble or drop it
        ("metrics-last-record-cut", lambda run: (run / "metrics.jsonl").write_bytes(
            (run / "metrics.jsonl").read_bytes()[:-40]), "1 the checkpoint has seen"),
        ("metrics-missing", remove("metrics.jsonl"), "holds 0 whole records"),
        ("metrics-binary", put("metrics.jsonl", noise(100) + b"\xff"), "cannot read"),
    ]
]

INTERRUPTIONS = [
    Case("interrupt-importing-the-model", [*FIT, "--out", "run"], DATA, code=130, says="aevb: interrupted",
         interrupt=("aevb.registry", "import_module")),
    Case("interrupt-resolving-the-model", [*FIT, "--out", "run"], DATA, code=130, says="aevb: interrupted",
         interrupt=("aevb.registry", "resolve")),
    Case("interrupt-loading-data", [*FIT, "--out", "run"], DATA, code=130, says="aevb: interrupted",
         interrupt=("aevb.fitting", "load_dataset")),
    Case("interrupt-building-the-model", [*FIT, "--out", "run"], DATA, code=130, says="aevb: interrupted",
         interrupt=("aevb.fitting", "build_model")),
    Case("interrupt-first-batch", [*FIT, "--out", "run"], DATA, code=130, says="aevb: interrupted",
         interrupt=("aevb.fitting", "check_first_batch")),
    Case("interrupt-eval-loading", ["eval", "run"], a_run(), code=130, says="aevb: interrupted",
         interrupt=("aevb.runs", "load_checkpoint")),
    Case("interrupt-eval-evaluating", ["eval", "run"], a_run(), code=130, says="aevb: interrupted",
         interrupt=("aevb.evaluation", "evaluate")),
    Case("interrupt-diagnose-diagnosing", ["diagnose", "run"], a_run(), code=130, says="aevb: interrupted",
         interrupt=("aevb.diagnostics", "diagnose")),
    Case("interrupt-sample-drawing", ["sample", "run", "--out", "s.png"], a_run(), code=130, says="aevb: interrupted",
         interrupt=("aevb.fitting", "draw")),
    Case("interrupt-resume-loading", ["resume", "run", "--no-progress"], a_run("interrupted"), code=130,
         says="interrupted; continue the run with aevb resume",
         interrupt=("aevb.runs", "load_file")),
    Case("interrupt-reproduce-planning", ["reproduce", "fa-1", "--out", "r"], code=130, says="aevb: interrupted",
         interrupt=("aevb.reproduce", "plan")),
]

CASES = [*PARSE, *FLAGS, *DATASETS, *OUTPUTS, *RUN_ARGS, *run_cases(["eval"]), *run_cases(["sample"]),
         *run_cases(["diagnose"])[::4],
         *run_cases(["sample"], "cvae")[:6], *RESUMES, *INTERRUPTIONS]


# Running a case ---------------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``, hidden ones included: files by size, modification time and bytes."""
    found = {}
    for folder, folders, files in os.walk(root):
        for name in folders:
            found[os.path.relpath(os.path.join(folder, name), root)] = ("folder",)
        for name in files:
            path = Path(folder, name)
            if path.is_symlink():
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
                continue
            info = path.stat()
            found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return found


def interrupting(monkeypatch, interrupt: tuple[str, str]) -> None:
    def raise_interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(".".join(interrupt), raise_interrupt)


def run(case: Case, folder: Path, fitted: dict, monkeypatch, capsys) -> tuple[str, str]:
    """Run ``case`` in ``folder``; returns (its outcome, stderr): 'clean', 'traceback', 'exit 0', 'left files' or
    'unclean: ...' (a wrong exit code, or other than one line)."""
    if case.setup:
        case.setup(folder, fitted)
    (folder / case.cwd).mkdir(exist_ok=True)
    before = snapshot(folder)
    monkeypatch.chdir(folder / case.cwd)
    escaped = None
    with monkeypatch.context() as patches:
        if case.interrupt:
            interrupting(patches, case.interrupt)
        try:
            code = main(case.argv)
        except SystemExit as e:  # argparse's errors
            code = e.code
        except BaseException as e:  # in a process of its own, a traceback
            code, escaped = None, e
    monkeypatch.chdir(folder)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    left = [p for p in case.outside if os.path.lexists(p)]
    if escaped is not None or "Traceback" in err:
        return f"traceback: {escaped!r}", err
    if code == 0:
        return "exit 0", err
    if snapshot(folder) != before or left:
        changed = {k for k in set(before) | set(snapshot(folder)) if before.get(k) != snapshot(folder).get(k)}
        return f"left files: {sorted(changed) + left}", err
    starts = "aevb: interrupted" if case.code == 130 else "aevb"
    if code != case.code or len(lines) != 1 or not lines[0].startswith(starts) or (case.code == 2 and ": error: " not in lines[0]):
        return f"unclean: exit {code}, {len(lines)} lines", err
    return "clean", err


def fit_quietly(argv: list) -> None:
    assert main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny VAE and CVAE, and a VAE interrupted after its first epoch (with a checkpoint), fitted to X as
    2x2 images (whose figures draw faster than vectors')."""
    root = tmp_path_factory.mktemp("fitted")
    np.save(root / "x.npy", X.reshape(60, 2, 2))
    np.savez(root / "labelled.npz", x=X.reshape(60, 2, 2), y=np.arange(60) % 3)
    fit_quietly(["fit", "vae", "--dataset", root / "x.npy", *TINY, "--out", root / "vae"])
    fit_quietly(["fit", "cvae", "--dataset", root / "labelled.npz", *TINY, "--out", root / "cvae"])
    with pytest.MonkeyPatch.context() as patches:
        step = Trainer.step

        def stop_after_the_first_epoch(self, batch, phase):
            if self.step_count == 5:
                self.request_stop(signal.SIGINT)
            return step(self, batch, phase)

        patches.setattr(Trainer, "step", stop_after_the_first_epoch)
        assert main(["fit", "vae", "--dataset", str(root / "x.npy"), *TINY, "--epochs", "3", "--out",
                     str(root / "interrupted")]) == 130
    return {"vae": root / "vae", "cvae": root / "cvae", "interrupted": root / "interrupted"}


def test_the_table_covers_every_command_with_at_least_150_cases():
    assert len(CASES) >= 150 and len({c.name for c in CASES}) == len(CASES)
    assert [c.name for c in CASES if not c.says] == []  # each case names what its error must say
    assert {c.argv[0] for c in CASES if c.argv} >= {"fit", "eval", "sample", "resume", "tour", "reproduce", "diagnose"}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_one_line_and_leaves_everything_as_it_was(case, tmp_path, fitted, monkeypatch, capsys):
    outcome, err = run(case, tmp_path, fitted, monkeypatch, capsys)
    assert outcome == "clean", f"{outcome}: {err.strip()[-600:]}"
    assert case.says in err, err


# Named tests ------------------------------------------------------------------------------------------------------
def test_a_folder_with_a_config_json_is_never_replaced(tmp_path, fitted, monkeypatch, capsys):
    """Not for a fit, not for a fit with --resume: only a folder aevb marked as its own is ever replaced."""
    mine = tmp_path / "mine"
    shutil.copytree(fitted["vae"], mine)
    (mine / "aevb-run.json").unlink()  # the files of a run, without aevb's marker: the user's now
    np.save(tmp_path / "x.npy", X)
    before = snapshot(tmp_path)
    for resume in ([], ["--resume"]):
        code = main(["fit", "vae", "--dataset", str(tmp_path / "x.npy"), *TINY, "--out", str(mine), *resume])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "not an aevb run directory" in err[0]
    assert main(["resume", str(mine)]) == 2
    assert snapshot(tmp_path) == before


def test_fit_run_from_python_never_writes_into_the_working_directory(tmp_path, monkeypatch):
    """The library refuses it too, not only the command line's --out."""
    from aevb import fitting
    from aevb.errors import UsageError

    monkeypatch.chdir(tmp_path)
    for out in (".", "", "..", tmp_path):
        with pytest.raises(UsageError, match="current folder"):
            fitting.fit_run("vae", out, progress=False, dataset="digits", epochs=1)
    assert list(tmp_path.iterdir()) == []


BLOCKED_FIT = """
import sys, time
from pathlib import Path
from aevb import trainer
from aevb.cli import main
step = trainer.Trainer.step
def slow_step(self, batch, phase):
    Path(sys.argv[1]).touch()  # training has begun
    time.sleep(60)
    return step(self, batch, phase)
trainer.Trainer.step = slow_step
sys.exit(main(sys.argv[2:]))
"""


def test_two_fits_into_one_folder_the_second_fails_at_once(tmp_path, capsys, preloaded_python):
    work, training = tmp_path / "work", tmp_path / "training"
    work.mkdir()
    np.save(work / "x.npy", X)
    argv = ["fit", "vae", "--dataset", str(work / "x.npy"), *TINY, "--out", str(work / "run")]
    first = preloaded_python.start(["-c", BLOCKED_FIT, training, *argv])  # a process of its own (see conftest.py)
    try:
        deadline = time.monotonic() + 120
        while not training.exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first fit did not start training"
            time.sleep(0.05)
        before = snapshot(work)
        start = time.monotonic()
        code = main(argv)
        seconds = time.monotonic() - start
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"pid {first.pid}" in err[0] and "another aevb process" in err[0]
        assert seconds < 2  # at once: before loading data or building a model
        assert snapshot(work) == before
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("command", [["eval", "run"], ["sample", "run", "--out", "s.png"], ["resume", "run"]])
def test_a_hostile_pickle_is_refused_and_does_not_run(command, tmp_path, fitted, monkeypatch, capsys):
    kind, name = ("interrupted", "checkpoint.pt") if command[0] == "resume" else ("vae", "model.pt")
    shutil.copytree(fitted[kind], tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save({"config": {}, "state_dict": Exploit(marker), "model": Exploit(marker)}, tmp_path / "run" / name)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(command)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and name in err[0] and "holds code" in err[0] and "weights_only" not in err[0]
    assert not marker.exists() and snapshot(tmp_path) == before


# Results that cannot be right: a warning, exit 0 -------------------------------------------------------------------
def test_an_absurd_test_elbo_is_a_warning(tmp_path, capsys):
    """The VAE with --lr 1e3 on the digits ends finite but absurd (a test ELBO near -1e31): exit 0, and a warning."""
    code = main(["fit", "vae", "--lr", "1e3", "--hidden", "500,500", "--epochs", "1", "--iwae", "2", "--device", "cpu",
                 "--no-progress", "--out", str(tmp_path / "run"), "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out.splitlines()[-1])
    assert code == 0 and summary["test_elbo"] < -1e6 * 64
    assert len(summary["warnings"]) == 1 and "test ELBO" in summary["warnings"][0]
    assert err.splitlines() == [f"aevb: warning: {summary['warnings'][0]}"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["warnings"] == summary["warnings"]


def test_a_plausible_test_elbo_gives_no_warning(tmp_path, capsys):
    np.save(tmp_path / "x.npy", X.reshape(60, 2, 2))
    assert main(["fit", "vae", "--dataset", str(tmp_path / "x.npy"), *TINY, "--out", str(tmp_path / "run"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "warnings" not in json.loads(out.splitlines()[-1]) and err == ""


def fa_data(scale: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (scale * (rng.normal(size=(600, 2)) @ rng.normal(size=(2, 5)) + 0.3 * rng.normal(size=(600, 5)))).astype(
        np.float32)


def test_fa_standardizes_user_data_so_that_their_units_do_not_matter(tmp_path, capsys):
    """FA on data in units of 1e6 fits as it does on the data as they are; the numbers are of the standardized data,
    and the offset to the data's own units is -D log 1e6 further."""
    summaries = []
    for scale in (1.0, 1e6):
        np.save(tmp_path / "x.npy", fa_data(scale))
        assert main(["fit", "fa", "--dataset", str(tmp_path / "x.npy"), "--latent-dim", "2", "--epochs", "8", "--lr",
                     "0.05", "--iwae", "0", "--no-progress", "--out", str(tmp_path / f"run{scale:g}"), "--json"]) == 0
        summaries.append(json.loads(capsys.readouterr().out.splitlines()[-1]))
    plain, scaled = summaries
    assert "standardized" in scaled["preprocessing"] and "warnings" not in scaled and "warnings" not in plain
    for key in ("test_log_evidence", "mle_log_evidence", "test_elbo"):
        assert scaled[key] == pytest.approx(plain[key], abs=1e-3)
    assert scaled["log_evidence_offset"] - plain["log_evidence_offset"] == pytest.approx(-5 * np.log(1e6), rel=1e-5)
    assert abs(scaled["gap_to_mle"]) < 0.1 * 5  # within the tolerance of the warning


def test_an_fa_fit_far_from_the_exact_em_reference_is_a_warning(tmp_path, capsys):
    """More than 0.1 nats per dimension below the exact-EM fit's test evidence: a fit that has not converged."""
    np.save(tmp_path / "x.npy", fa_data(1.0))
    assert main(["fit", "fa", "--dataset", str(tmp_path / "x.npy"), "--latent-dim", "2", "--steps", "1", "--lr", "1e-4",
                 "--iwae", "0", "--no-progress", "--out", str(tmp_path / "run"), "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.splitlines()[-1])
    assert summary["gap_to_mle"] > 0.5 and "exact-EM" in summary["warnings"][0]
    assert err.splitlines() == [f"aevb: warning: {summary['warnings'][0]}"]


# Signals and permissions: processes of their own --------------------------------------------------------------------
INTERRUPTED_LATE = """
import os, signal, sys, threading, time
from aevb import {module}
from aevb.cli import main
real = {module}.{function}
def interrupt():
    with open(sys.argv[1], "w") as f:
        f.write(str(time.time()))
    os.kill(os.getpid(), signal.SIGINT)
def interrupted_after_a_second(*args, **kwargs):
    threading.Timer(1.0, interrupt).start()
    return real(*args, **kwargs)
{module}.{function} = interrupted_after_a_second
sys.exit(main(sys.argv[2:]))
"""


LONG_STEPS = {  # a long step after training: (module, function), flags
    "iwae": (("evaluation", "iwae_log_likelihood"), ["--iwae", str(MAX_IWAE_SAMPLES)]),  # minutes, uninterrupted
    "tsne": (("plotting", "tsne"), ["--iwae", "0"]),
}


@pytest.fixture(scope="module")
def interrupted_late(tmp_path_factory, preloaded_python) -> dict[str, tuple]:
    """Each fit of ``LONG_STEPS`` sent SIGINT a second into its long step, all at once (each in a process of its own,
    forked from one that has imported aevb: see conftest.py); name -> (exit code, stderr, seconds from the signal
    to the exit, run directory)."""
    root = tmp_path_factory.mktemp("interrupted")
    np.save(root / "x.npy", np.random.default_rng(0).uniform(size=(3000, 8, 8)).astype(np.float32))
    running = {}
    for name, ((module, function), flags) in LONG_STEPS.items():
        argv = ["fit", "vae", "--dataset", root / "x.npy", *TINY, "--latent-dim", "8", "--steps", "1", "--batch-size",
                "100", *flags, "--out", root / name]
        running[name] = preloaded_python.start(["-c", INTERRUPTED_LATE.format(module=module, function=function),
                                                root / f"{name}.signalled", *argv])
    finished = {}
    deadline = time.monotonic() + 300
    while len(finished) < len(running) and time.monotonic() < deadline:
        finished.update({name: time.time() for name, process in running.items()
                         if name not in finished and process.poll() is not None})
        time.sleep(0.05)
    for process in running.values():
        process.kill()
    return {name: (process.wait(), process.stderr,
                   finished.get(name, math.inf) - float((root / f"{name}.signalled").read_text()), root / name)
            for name, process in running.items()}


@pytest.mark.parametrize("name", LONG_STEPS)
def test_sigint_in_a_long_evaluation_answers_within_seconds(name, interrupted_late):
    """After training (where SIGINT stops at a step boundary), a Ctrl-C interrupts at once: exit 130, one line, and
    the run keeps the checkpoint of its last step."""
    code, err, seconds, run_dir = interrupted_late[name]
    assert code == 130 and err.strip().splitlines() == [
        f"aevb: interrupted; continue the run with aevb resume {run_dir}"], err
    assert seconds < 5
    assert json.loads((run_dir / "aevb-run.json").read_text())["status"] == "incomplete"


def test_a_keyboard_interrupt_while_importing_torch_in_a_fresh_process_is_one_line(tmp_path):
    code = ("import builtins, sys\nreal = builtins.__import__\n"
            "def interrupted(name, *a, **k):\n    if name == 'torch': raise KeyboardInterrupt\n    return real(name, *a, **k)\n"
            "builtins.__import__ = interrupted\nfrom aevb.cli import main\nsys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "fit", "vae", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 130 and result.stderr.strip().splitlines() == ["aevb: interrupted"]
    assert list(tmp_path.iterdir()) == []


UNPRIVILEGED = """
import contextlib, ctypes, io, json, os, sys
from aevb.cli import main


def drop_permission_overrides():
    \"\"\"As root, drop CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from this process's effective, permitted and
    inheritable sets (capset) and from its bounding set (for any program it would run): from here on, this process
    is bound by file permissions, as any user is.\"\"\"
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: capabilities 0-63
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for field in ("effective", "permitted", "inheritable"):
        setattr(data[0], field, getattr(data[0], field) & ~0b110)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


if os.geteuid() == 0:
    drop_permission_overrides()
results = {}
for name, cwd, argv in json.loads(sys.argv[1]):
    os.chdir(cwd)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""


PERMISSIONS = {  # name: (argv, the mode of paths in the case's folder, a fragment of the error line)
    "fit-into-a-read-only-folder": ([*FIT, "--out", "new"], {".": 0o555}, "cannot write in"),
    "fit-creating-in-a-read-only-folder": ([*FIT, "--out", "deeper/new"], {".": 0o555}, "cannot create"),
    "fit-over-a-run-in-a-read-only-folder": ([*FIT, "--out", "run"], {".": 0o555}, "cannot write in"),
    "fit-over-a-run-that-cannot-be-emptied": ([*FIT, "--out", "run"], {"run": 0o555}, "cannot remove"),
    "fit-unreadable-data": ([*FIT, "--out", "new"], {"x.npy": 0o000}, "Permission denied"),
    "sample-into-a-read-only-folder": (["sample", "run", "--out", "s.png"], {".": 0o555}, "cannot write in"),
    "sample-into-a-read-only-run": (["sample", "run"], {"run": 0o555}, "cannot write in"),
    "resume-in-a-read-only-folder": (["resume", "run"], {".": 0o555}, "cannot write in"),
    "eval-unreadable-model": (["eval", "run"], {"run/model.pt": 0o000}, "cannot read run/model.pt (Permission denied)"),
}


@pytest.fixture(scope="module")
def unprivileged(tmp_path_factory, fitted, preloaded_python) -> dict[str, tuple]:
    """Every case of ``PERMISSIONS`` in a folder of its own, run in one process that file permissions bind (as root:
    without the capabilities that override them; the process is forked from one that has imported aevb, see
    conftest.py); name -> (exit code, stderr, snapshot before, snapshot after)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux: as root, to drop the capabilities that override file permissions")
    root = tmp_path_factory.mktemp("unprivileged")
    before = {}
    for name, (argv, modes, says) in PERMISSIONS.items():
        (root / name).mkdir()
        DATA(root / name, fitted)
        shutil.copytree(fitted["vae"], root / name / "run")
        before[name] = snapshot(root / name)
        for path, mode in modes.items():
            (root / name / path).chmod(mode)
    cases = [[name, str(root / name), argv] for name, (argv, modes, says) in PERMISSIONS.items()]
    result = preloaded_python.run(["-c", UNPRIVILEGED, json.dumps(cases)], timeout=300)
    assert result.returncode == 0, result.stderr
    for name, (argv, modes, says) in PERMISSIONS.items():
        for path in modes:
            (root / name / path).chmod(0o755 if (root / name / path).is_dir() else 0o644)
    results = json.loads(result.stdout.splitlines()[-1])
    return {name: (*results[name], before[name], snapshot(root / name)) for name in PERMISSIONS}


@pytest.mark.parametrize("name", PERMISSIONS)
def test_without_permission_to_write_or_read_it_is_one_line(name, unprivileged):
    code, err, before, after = unprivileged[name]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and PERMISSIONS[name][2] in lines[0], err
    assert after == before


def test_sample_replaces_a_file_only_when_told_and_its_own_default_always(tmp_path, fitted, capsys):
    run = tmp_path / "run"
    shutil.copytree(fitted["vae"], run)
    (tmp_path / "mine.npy").write_text("mine")
    assert main(["sample", run, "--out", tmp_path / "mine.npy"]) == 2  # not without --overwrite
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "mine.npy").read_text() == "mine"
    assert main(["sample", run, "--out", tmp_path / "mine.npy", "--overwrite"]) == 0
    assert np.load(tmp_path / "mine.npy").shape == (30, 2, 2)
    for _ in range(2):  # RUN/samples.png, aevb's own, is drawn afresh at each call
        if (run / "samples.png").exists():
            os.utime(run / "samples.png", ns=(0, 0))
        assert main(["sample", run]) == 0
        assert (run / "samples.png").stat().st_mtime_ns != 0 and (run / "samples.png").stat().st_size > 1000


def test_the_files_aevb_writes_have_the_usual_permissions(fitted):
    """0666 less the umask (0644 under the usual 022), as any file a program creates, not mkstemp's 0600."""
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("summary.json", "config.json", "model.pt", "aevb-run.json", "vae_learning_curve.png"):
        assert (fitted["vae"] / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_a_file_is_on_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """A crash of the machine after the rename must not leave an empty file where the old one was: the new file's
    bytes are synced before the rename, and its folder after it."""
    events = []
    synced, replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino, os.fstat(fd).st_size))
        synced(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), replace(a, b)))
    path = tmp_path / "summary.json"
    path.write_text("old")
    runs.write_json(path, {"new": 1})
    file, renamed, folder = events  # the new file (renamed, so the same inode) whole, the rename, then its folder
    assert file == ("fsync", path.stat().st_ino, len(path.read_bytes())) and json.loads(path.read_text()) == {"new": 1}
    assert renamed == ("replace", str(path)) and folder[:2] == ("fsync", tmp_path.stat().st_ino)


def test_a_full_disk_is_one_line_and_leaves_no_half_written_diagnosis(tmp_path, fitted):
    """A file-size limit (``ulimit -f``) stands in for a full disk: the figure cannot be written, so neither is the
    diagnosis that would describe it."""
    import resource

    run = tmp_path / "run"
    shutil.copytree(fitted["vae"], run)
    before = snapshot(run)
    result = subprocess.run([sys.executable, "-m", "aevb", "diagnose", run, "--examples", "5", "--iwae", "2",
                             "--steps", "2", "--samples", "1", "--eval-samples", "2", "--no-progress"],
                            capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"aevb: error: {run / 'diagnostics.png'}: File too large"]
    assert snapshot(run) == before  # no diagnostics.json, no temporary file
