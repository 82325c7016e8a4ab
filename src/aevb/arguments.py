"""Types of command-line values, shared by the ``aevb`` command and the fit path (imports nothing heavy).

Values at the edges are refused here, when the command line is parsed, in one line:

* seeds lie in [0, ``SEED_MAX``] = [0, 2^32 - 1], what every generator a fit draws from accepts (torch's up to
  2^64 - 1, numpy's legacy ``RandomState`` behind scikit-learn's t-SNE and k-means up to 2^32 - 1);
* importance samples K of the IWAE bound at most ``MAX_IWAE_SAMPLES`` = 10^5, 20 times the literature's 5000:
  K forward passes per test example, days for MNIST beyond it;
* samples drawn by ``aevb sample`` at most ``MAX_SAMPLES`` = 1000 (per class): a figure of them stays within
  what matplotlib draws (2^16 pixels a side);
* local E-steps (``aevb diagnose``, ``aevb eval --refine``) at most ``MAX_LOCAL_STEPS`` = 10^5 per example, and
  draws of z per example at most ``MAX_DRAWS`` = 10^4 (each a decoder pass per example, in memory at once);
* floats finite (no nan or inf), and an output folder never the working directory or one above it.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SEED_MAX = 2**32 - 1
MAX_IWAE_SAMPLES = 100_000
MAX_SAMPLES = 1000
MAX_EPOCHS_SCALE = 100
MAX_LOCAL_STEPS = 100_000
MAX_DRAWS = 10_000
MAX_THREADS = 1024


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def at_most(parse: Callable[[str], float], bound: float, why: str) -> Callable[[str], float]:
    """``parse``, refusing values above ``bound`` (``why`` says why there is one)."""
    def bounded(text: str):
        value = parse(text)
        if value > bound:
            raise argparse.ArgumentTypeError(f"must be at most {bound:,} ({why}), got {text}")
        return value

    bounded.__name__ = parse.__name__  # argparse names the type in "invalid positive_int value: 'x'"
    return bounded


@dataclass(frozen=True)
class LocalEStep:
    """Settings of the local E-steps of ``aevb.diagnostics`` (``aevb diagnose``, ``aevb eval --refine``): Adam steps,
    draws of z per gradient, initial learning rate (cosine decay to 0), and draws per example for the final ELBOs."""

    steps: int = 100
    samples: int = 10
    lr: float = 0.05
    eval_samples: int = 100


random_seed = at_most(non_negative_int, SEED_MAX, "2^32 - 1: what numpy's and scikit-learn's generators accept")
iwae_samples = at_most(non_negative_int, MAX_IWAE_SAMPLES, "K forward passes per test example")
positive_iwae_samples = at_most(positive_int, MAX_IWAE_SAMPLES, "K forward passes per test example")
epochs_scale = at_most(positive_float, MAX_EPOCHS_SCALE, "100 times the tutorial's training")
sample_count = at_most(positive_int, MAX_SAMPLES, "a figure of them stays drawable; draw more from Python")
thread_count = at_most(positive_int, MAX_THREADS, "torch's thread pool; threads beyond the cores only slow a fit")
local_steps = at_most(non_negative_int, MAX_LOCAL_STEPS, "each is a forward and backward pass per example")
draws = at_most(positive_int, MAX_DRAWS, "each is a decoder pass per example")


def number_tuple(kind: type) -> Callable[[str], tuple]:
    """The parser of comma-separated numbers of one kind: ``int`` (500,500) or ``float`` (0.5,1, finite)."""
    number, example = (int, "integers such as 500,500") if kind is int else (finite_float, "numbers such as 0.5,1")

    def parse(text: str) -> tuple:
        try:
            return tuple(number(s) for s in text.split(","))
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected comma-separated {example}, got {text!r}") from None
    return parse


def epoch_list(text: str) -> tuple[int, ...]:
    """Increasing positive epochs, comma-separated: 200,350 (nothing: none)."""
    if not text:
        return ()
    try:
        epochs = tuple(int(s) for s in text.split(","))
    except ValueError:
        epochs = ()
    if not epochs or min(epochs) < 1 or list(epochs) != sorted(set(epochs)):
        raise argparse.ArgumentTypeError(f"expected increasing positive epochs such as 200,350, got {text!r}")
    return epochs


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def for_terminal(docstring: str) -> str:
    """A docstring as a command's help: reStructuredText's ``code`` printed as `code`, as Markdown writes it."""
    return docstring.replace("``", "`")


def output_problem(path: Path) -> str | None:
    """What makes ``path`` unfit to be written as a folder of aevb's, or None: the working directory or a folder
    above it (replacing it would remove the user's files), or an existing file."""
    try:
        resolved, here = path.expanduser().resolve(), Path.cwd().resolve()
        if resolved == here or resolved in here.parents:
            return f"{path} is the current folder or holds it; name a folder for aevb to write, e.g. runs/NAME"
        existing = next(p for p in [path, *path.parents] if p.exists())  # "." or "/" at the latest
        if existing.exists() and not existing.is_dir():
            return f"{existing} is a file, not a folder; choose another --out"
    except OSError as e:  # a name too long, a loop of links
        return f"{path}: {e.strerror}; choose another --out"
    return None


def output_folder(text: str) -> Path:
    """``--out`` of fit, tour and reproduce: a folder aevb writes (``output_problem`` says which it refuses)."""
    problem = output_problem(Path(text))
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)
