"""Flag types and the flags every experiment shares."""
from __future__ import annotations

import argparse


def add_dataset_arguments(parser: argparse.ArgumentParser, user_files: str = "a .npy/.npz/.csv file") -> None:
    """--dataset (default: the offline digits) and --data-dir, for the image and sequence models."""
    parser.add_argument("--dataset", default="digits",
                        help="mnist, digits (scikit-learn's, offline), idx:DIR (a folder in the MNIST layout) or "
                             f"{user_files} (default digits)")
    parser.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (else $AEVB_DATA_DIR, else download)")


def add_training_arguments(parser: argparse.ArgumentParser, epochs: int, batch_size: int, lr: float) -> None:
    """--epochs, --batch-size, --lr and --seed with the model's defaults, and --compile."""
    parser.add_argument("--epochs", type=positive_int, default=epochs, help=f"passes over the training set (default {epochs})")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"mini-batch size (default {batch_size})")
    parser.add_argument("--lr", type=positive_float, default=lr, help=f"Adam learning rate (default {lr:g})")
    parser.add_argument("--seed", type=int, default=0, help="random seed: data, initialization, batches (default 0)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the training step with torch.compile (CUDA graphs on a GPU, where it pays)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
