"""TensorBoard event files in a run directory: a view of the training records, never their source of truth.

``metrics.jsonl`` is what a run recorded; the event files show the same numbers in TensorBoard
(``tensorboard --logdir runs``) while training goes on. They need the optional ``tensorboard`` package
(``pip install 'aevb[tensorboard]'``), which nothing else in aevb imports.
"""
from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from aevb.errors import UsageError

PHASE_CODES = {"e": 0, "joint": 1, "mixed": 1, "m": 2}  # a plottable number: phi only, both, theta only
SPLITS = ("train", "test")
FIGURE_SUFFIXES = (".png", ".gif")


def tag(key: str) -> str:
    """A record's key as a TensorBoard tag: 'train_elbo' -> 'train/elbo', 'test_elbo' -> 'test/elbo',
    'epoch' -> 'schedule/epoch', any other key -> 'metrics/KEY'."""
    split, _, name = key.partition("_")
    if split in SPLITS and name:
        return f"{split}/{name}"
    return f"schedule/{key}" if key == "epoch" else f"metrics/{key}"


def read_figure(path: Path) -> np.ndarray:
    """A figure file's pixels, (H, W, 3) uint8; an animation's last frame (the finished picture)."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as image:
        image.seek(getattr(image, "n_frames", 1) - 1)
        return np.asarray(image.convert("RGB"))


class TensorBoardLogger:
    """A trainer callback writing each epoch's records as TensorBoard scalars into ``run_dir``.

    Every numeric value of a record is a scalar at the record's ``step`` (tags from ``tag``: 'train/elbo',
    'train/log_likelihood', 'train/kl', 'test/elbo', 'metrics/cluster_accuracy', 'schedule/epoch', ...), and the
    record's phase is the scalar 'schedule/phase': 0 for an E-phase (phi only), 1 for joint AEVB or an epoch of
    E and M steps (both groups move), 2 for an M-phase (theta only). The events are flushed after every epoch,
    so a killed process leaves those of the epochs it finished. ``add_figures`` adds the run's figures as images.

    ``purge_step``: for a resumed run, the step after the last record its checkpoint has seen (0 if none);
    TensorBoard then hides what an earlier process logged from that step on, which the resumed run logs again.
    Raises ``UsageError`` if the ``tensorboard`` package is not installed.
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # absent, or older than torch accepts
            raise UsageError(f"--tensorboard needs the tensorboard package: pip install 'aevb[tensorboard]' ({e})") from None
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)

    def __call__(self, records: list[dict]) -> None:
        for record in records:
            step = record["step"]
            for key, value in record.items():
                if key == "phase" and value in PHASE_CODES:
                    self.writer.add_scalar("schedule/phase", PHASE_CODES[value], step)
                elif key != "step" and isinstance(value, numbers.Real):
                    self.writer.add_scalar(tag(key), value, step)
        self.writer.flush()

    def add_figures(self, step: int) -> None:
        """The run directory's figures (every PNG and GIF) as images 'figures/NAME' at ``step``."""
        for path in sorted(p for p in self.run_dir.iterdir() if p.suffix in FIGURE_SUFFIXES):
            self.writer.add_image(f"figures/{path.stem}", read_figure(path), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
