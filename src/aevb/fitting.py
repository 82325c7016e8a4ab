"""The one fit path every model travels, the user's own included: ``aevb fit``, ``aevb eval``, ``aevb sample``.

    parse flags -> load and validate the data -> build the model from its config -> train with a schedule ->
    evaluate (test ELBO, IWAE, bits/dim) -> figures -> run directory (config, metrics, summary, checkpoint)

The flags of a model are the generic ones (data, schedule, length, optimizer, evaluation, output), one per
field of its config dataclass (``latent_dim`` -> ``--latent-dim``; the fields ``data_dim``, ``seq_len`` and
``num_classes`` come from the data), and those of its hooks. A model adds what is truly its own (its data,
metrics, summary entries, figures) through ``Hooks``, which it names in its class attribute ``hooks``.

From Python, ``fit_run(Model, out, dataset=..., latent_dim=...)`` is ``aevb fit`` with keyword flags, and
``load_run``, ``evaluate_run`` and ``sample_run`` read a run directory back.
"""
from __future__ import annotations

import argparse
import collections.abc
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import re
import signal
import sys
import threading
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import Tensor

import aevb
from aevb import diagnostics, distributed, evaluation, registry, testing
from aevb.arguments import (MAX_IWAE_SAMPLES, epoch_list, finite_float, for_terminal, fraction, iwae_samples,
                            local_steps, number_tuple, positive_float, positive_int, positive_iwae_samples,
                            random_seed, sample_count, thread_count)
from aevb.data import (ARRAY_SUFFIXES, TRANSFORMS, as_sequences, dynamic_binarize, load_dataset, prepare, standardize,
                       validate_support)
from aevb.disk import DiskRows, chunks
from aevb.errors import DataError, Diverged, Interrupted, UsageError
from aevb.likelihoods import LIKELIHOODS
from aevb.model import LatentVariableModel, build
from aevb import runs
from aevb.runs import default_device, device_name, read_json
from aevb.threads import THREADS_HELP, default_threads, torch_threads
from aevb.schedules import SCHEDULE_HELP, Schedule
from aevb.trainer import Trainer, batch_sizes

DATA_FIELDS = ("data_dim", "seq_len", "num_classes")  # config fields filled from the data, not from flags
SAMPLE_SUFFIXES = (".png", ".npy", ".npz")  # what aevb sample writes
KINDS = ("images", "vectors", "sequences")  # of data: what Data.kind and a run's config.json say
IMPLAUSIBLE_NATS_PER_DIMENSION = -1e6  # a test ELBO below this per dimension of x is a failed fit, not a result
DEFAULT_TRANSFORMS = {  # for integer pixels
    "cb": "dequantize", "cb-clamped": "dequantize", "bernoulli": "binarize", "gaussian": "dequantize"}
GRID_COLUMNS = 10
SAMPLES_PLOTTED = 30


@dataclass
class Data:
    """A fit's data, as the model sees it: tuples ``(x, *context)`` of float32 examples (and int64 labels)."""

    train: tuple[Tensor, ...]
    test: tuple[Tensor, ...]
    y_test: Tensor | None  # the test labels, when the data set has them (for figures and metrics)
    shape: tuple[int, ...]  # one example's: (H, W) an image, (D,) a vector, (T, D) a sequence
    kind: str  # one of KINDS: "images", "vectors" or "sequences"
    levels: int | None = None  # the pixel levels behind dequantized data (for bits/dim), else None
    num_classes: int | None = None
    transform: Callable | None = None  # applied to every training batch (dynamic binarization)
    standardization: tuple[Tensor, Tensor] | None = None  # (m, s), (D,) each: u = (x - m) / s, flat

    @property
    def log_evidence_offset(self) -> float | None:
        """log p(x) - log p(u) = -sum_d log s_d where the model sees standardized data u, else None."""
        return None if self.standardization is None else -self.standardization[1].double().log().sum().item()

    def config_values(self, fields: Sequence[str]) -> dict[str, int]:
        """The values of the config fields ``DATA_FIELDS`` that the model declares."""
        values = {"data_dim": self.shape[-1] if self.kind == "sequences" else math.prod(self.shape),
                  "seq_len": self.shape[0], "num_classes": self.num_classes}
        return {name: values[name] for name in DATA_FIELDS if name in fields}


class Hooks:
    """What a model adds to the one fit path. Every method's default is the generic behaviour.

    A model names its hooks in its class attribute ``hooks`` (a subclass of this, or "module:Class"). The
    class attributes set the defaults of the generic flags; ``add_arguments`` adds flags of its own, which
    ``self.args`` holds.
    """

    epochs: ClassVar[int] = 10
    batch_size: ClassVar[int] = 100
    lr: ClassVar[float] = 1e-3
    iwae: ClassVar[int] = 100  # importance samples for the summary's IWAE bound (0 skips it)
    dataset: ClassVar[str] = "digits"
    datasets: ClassVar[str] = ""  # the model's own data sets, for --dataset's help: ", or NAME (what)"
    transform: ClassVar[str | None] = None  # None: chosen from the likelihood (integer pixels) or "none"
    likelihood: ClassVar[str | None] = None  # p(x|z)'s family when the config has no likelihood field
    eval_every: ClassVar[str] = "epoch"  # or "step": evaluate on the test set after every gradient step

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags of the model's own."""

    def data(self) -> Data | None:
        """The model's own data (e.g. a synthetic data set), or None for ``--dataset``'s."""
        return None

    def initialize(self, model: LatentVariableModel, data: Data) -> None:
        """Set starting values from the training data (e.g. k-means centres) before the first step."""

    def callbacks(self, model: LatentVariableModel) -> list[Callable[[list[dict]], None]]:
        """Trainer callbacks, called with each epoch's records (``Trainer``: and a last, unfinished one's)."""
        return []

    def metrics(self, model: LatentVariableModel, data: Data, step: int | None) -> dict[str, Any]:
        """Test metrics beyond the ELBO, recorded at every evaluation (``step``) and by ``aevb eval`` (None)."""
        return {}

    def summary(self, model: LatentVariableModel, data: Data, history: list[dict], generic: dict) -> dict[str, Any]:
        """Summary entries of the model's own, after the ``generic`` ones (they may replace them)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What these hooks gather during a fit that its figures or summary need (tensors, numbers, strings, and
        lists and dicts of them): kept in the checkpoint, so that a resumed fit has what the interrupted one
        gathered."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back ``state_dict()``'s from a checkpoint (``{}`` from one of an earlier aevb)."""

    def figures(self, model: LatentVariableModel, history: list[dict], data: Data, run_dir: Path) -> None:
        """The learning curve, samples and an embedding of the test codes; override to add or replace."""
        self.learning_curve(history, run_dir / f"{model.name}_learning_curve.png", title=f"{model.name} on {self.args.dataset}")
        self.samples(model, data, run_dir / f"{model.name}_samples.png")
        self.embedding(model, data, run_dir / f"{model.name}_tsne.png")

    def learning_curve(self, history: list[dict], path: Path, title: str, extra: dict[str, str] | None = None) -> None:
        from aevb import plotting

        curves = {"train_elbo": "training ELBO" + (" (epoch mean)" if self.eval_every == "epoch" else ""),
                  "test_elbo": "test ELBO", **(extra or {})}
        plotting.curves(history, curves, path, x=self.eval_every, title=title)

    def samples(self, model: LatentVariableModel, data: Data, path: Path) -> None:
        from aevb import plotting

        torch.manual_seed(self.args.seed)
        num_classes = data.num_classes if is_conditional(type(model)) else None
        context = () if num_classes else tuple(t[:SAMPLES_PLOTTED] for t in data.test[1:])  # other than labels
        x, rows = draw(model, num_classes, GRID_COLUMNS if num_classes else SAMPLES_PLOTTED, context=context)
        by_class = (", a band per class y" if data.kind == "vectors" else ", each panel titled by its class y"
                    if len(data.shape) == 2 and not plotting.image_like(data.shape) else ", one row per class y")
        title = ("samples x ~ p(x" + (f" | y){by_class}" if rows else ")") if not context else
                 f"samples x ~ p(x | c) for the contexts c of the first {len(x)} test examples")
        plot_examples(x, rows, data.shape, data.kind, path, title=title,
                      reference=data.test[0], value_range=grey_range(data.test[0]), reference_labels=data.y_test)

    def embedding(self, model: LatentVariableModel, data: Data, path: Path) -> None:
        """t-SNE of the test codes ``encode(x)``, coloured by label when the data have labels."""
        from aevb import plotting

        if len(data.test[0]) < 4:  # t-SNE needs a few points
            return
        torch.manual_seed(self.args.seed)
        with evaluation.eval_mode(model) as device:
            subset = torch.randperm(len(data.test[0]))[:plotting.TSNE_POINTS]
            codes = model.encode(*(t[subset].to(device) for t in data.test)).flatten(1).cpu().numpy()
        labels = None if data.y_test is None else data.y_test[subset].numpy()
        active = diagnostics.active_units(torch.from_numpy(codes))  # t-SNE shows clusters even of collapsed codes
        plotting.tsne(codes, labels, path, seed=self.args.seed,
                      title=f"t-SNE of the test codes encode(x); {active} of {codes.shape[1]} dimensions active "
                            f"(Cov_x > {diagnostics.ACTIVE_UNIT_THRESHOLD:g})")


def is_conditional(cls: type) -> bool:
    """A model whose config has a ``num_classes`` field models p(x | y): its batches are (x, y)."""
    return "num_classes" in {f.name for f in dataclasses.fields(cls.Config)}


def hooks_class(cls: type) -> type[Hooks]:
    """The hooks a model class names (``cls.hooks``), or the generic ``Hooks``."""
    hooks = getattr(cls, "hooks", None) or Hooks
    if isinstance(hooks, str):
        module, _, name = hooks.partition(":")
        hooks = getattr(registry.import_module(module, hooks), name)
    return hooks


# Flags ------------------------------------------------------------------------------------------------
def schedule_type(text: str) -> Schedule:
    try:
        return Schedule.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def checkpoint_interval(text: str) -> tuple[int, str]:
    """'N' (epochs) or 'Nsteps' -> (N, 'epoch' or 'step'); also its form in config.json, 'N,epoch' or 'N,step'."""
    text = text.replace(",step", "steps").removesuffix(",epoch")
    unit = "step" if text.endswith("steps") else "epoch"
    try:
        return positive_int(text.removesuffix("steps")), unit
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected N (epochs) or Nsteps, e.g. 2 or 500steps, got {text!r}") from None


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The config fields that are flags: all but ``DATA_FIELDS``."""
    return [f for f in dataclasses.fields(cls.Config) if f.name not in DATA_FIELDS and f.init]


def field_flag(field: dataclasses.Field) -> str:
    return "--" + field.metadata.get("flag", field.name.replace("_", "-"))


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per config field, typed by its annotation: int, float, str, bool, Literal choices, tuples (or lists,
    or Sequences) of ints or of floats."""
    hints = typing.get_type_hints(cls.Config)
    group = parser.add_argument_group(f"model configuration ({cls.Config.__name__})")
    for field in config_fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kind = hints[field.name]
        options: dict[str, Any] = {}
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # Optional[X]: X, default None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is typing.Literal:
            options["choices"] = typing.get_args(kind)
            kind = type(options["choices"][0])
            options["metavar"] = "{" + ",".join(map(str, options["choices"])) + "}"
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) in (tuple, list, collections.abc.Sequence) or kind in (tuple, list):
            options["type"] = number_tuple(float if float in typing.get_args(kind) else int)
            default = None if default is None else tuple(default)
        else:
            options["type"] = finite_float if kind is float else kind  # no nan or inf, whatever the model checks
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = field.metadata.get("help", field.name.replace("_", " "))
        if kind is not bool:
            options.setdefault("metavar", field.name.upper())
        group.add_argument(field_flag(field), dest=f"config_{field.name}", default=default,
                           help=f"{help_text} (default {shown})", **options)


def add_generic_arguments(parser: argparse.ArgumentParser, cls: type, hooks: type[Hooks]) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=hooks.dataset,
                      help=f"mnist, digits (scikit-learn's, offline), idx:DIR (a folder in the MNIST layout), a "
                           f".npy/.npz/.csv file, a folder of .npy shards{hooks.datasets} (default {hooks.dataset})")
    data.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (else $AEVB_DATA_DIR, else download)")
    data.add_argument("--transform", choices=TRANSFORMS, default=hooks.transform,
                      help="integer pixels: dequantize, binarize (threshold the dequantized value at 0.5), "
                           "static-binarize (draw each pixel once from Bernoulli(intensity), seeded), "
                           "dynamic-binarize (draw afresh every batch), or none; real values: standardize (each "
                           "value to its training mean 0 and standard deviation 1; bounds are then of the "
                           "standardized data, log_evidence_offset gives the data's) or none (default: binarize for a "
                           "Bernoulli likelihood, dequantize for others; none for float or 0/1 data and for models "
                           "without a likelihood setting)")
    training = parser.add_argument_group("training (approximate EM)")
    training.add_argument("--schedule", type=schedule_type, default=None,
                          help=f"{SCHEDULE_HELP} (default joint)")
    training.add_argument("--epochs", type=positive_int, default=hooks.epochs,
                          help=f"passes over the training set (default {hooks.epochs})")
    training.add_argument("--steps", type=positive_int, default=None,
                          help="gradient steps, instead of --epochs (given, it replaces --epochs)")
    training.add_argument("--batch-size", type=positive_int, default=hooks.batch_size,
                          help=f"mini-batch size (default {hooks.batch_size})")
    training.add_argument("--lr", type=positive_float, default=hooks.lr, help=f"Adam learning rate (default {hooks.lr:g})")
    training.add_argument("--lr-milestones", type=epoch_list, default=(), metavar="E1,E2,...",
                          help="multiply the learning rate by --lr-gamma after each of these epochs (default: constant)")
    training.add_argument("--lr-gamma", type=fraction, default=0.1,
                          help="the factor of each learning-rate decay, in (0, 1] (default 0.1)")
    estimators = getattr(cls, "estimators", None)
    if estimators == ():  # an ELBO of the model's own, with no choice of estimator: no flag
        parser.set_defaults(estimator=None)
    else:
        training.add_argument("--estimator", choices=estimators, default=None,
                              help="the ELBO estimator of training (default: the model's"
                                   + (f", {estimators[0]}" if estimators else "") + ")")
    training.add_argument("--seed", type=random_seed, default=0,
                          help="random seed: data, initialization, batches; 0 to 2^32 - 1 (default 0)")
    training.add_argument("--compile", action="store_true",
                          help="compile the training step with torch.compile (CUDA graphs on a GPU; on a CPU, for long fits)")
    training.add_argument("--clip-grad", type=positive_float, default=None, metavar="NORM",
                          help="clip the gradient's norm to NORM at every step (default: no clipping)")
    training.add_argument("--threads", type=thread_count, default=None, metavar="N", help=THREADS_HELP)
    training.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:N or mps "
                                                           "(default auto)")
    training.add_argument("--tensorboard", action="store_true",
                          help="also write TensorBoard event files into the run directory: the ELBO, the phase, the "
                               "test metrics and the figures (needs pip install 'aevb[tensorboard]')")
    training.add_argument("--checkpoint-every", type=checkpoint_interval, default=(1, "epoch"), metavar="N[steps]",
                          help="write the checkpoint an interrupted run resumes from every N epochs, or every N steps "
                               "with the suffix 'steps', e.g. 500steps (default 1: every epoch)")
    evaluate = parser.add_argument_group("evaluation and output")
    evaluate.add_argument("--iwae", type=iwae_samples, default=hooks.iwae, metavar="K",
                          help=f"importance samples for the test log-likelihood bound, at most {MAX_IWAE_SAMPLES:,}; "
                               f"0 skips it (default {hooks.iwae})")


def fit_parser(cls: type, prog: str, parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser):
    """The parser of ``aevb fit MODEL``: generic flags, config flags, the hooks' flags (no output flags)."""
    hooks = hooks_class(cls)
    description = for_terminal((sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip())
    parser = parser_class(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generic_arguments(parser, cls, hooks)
    add_config_arguments(parser, cls)
    hooks.add_arguments(parser.add_argument_group(f"{cls.name}'s own"))
    return parser


# Data -------------------------------------------------------------------------------------------------
def absolute_dataset(name: str) -> str:
    """A dataset name with its path made absolute, so a run can be evaluated from any working directory."""
    if name.startswith("idx:"):
        return "idx:" + str(Path(name[4:]).expanduser().resolve())
    if Path(name).suffix in ARRAY_SUFFIXES or Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    return name


def likelihood_choices(cls: type) -> tuple[str, ...]:
    """The likelihoods ``--likelihood`` offers ``cls`` (its config field's Literal), none without that field."""
    hint = typing.get_type_hints(cls.Config).get("likelihood")
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def load_data(args: argparse.Namespace, cls: type) -> Data:
    """``--dataset`` prepared for ``cls``: transformed, validated against the likelihood, sequences or labels
    as the config's fields ask (``seq_len``: sequences (N, T, D); ``num_classes``: batches (x, y))."""
    raw = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    likelihood = getattr(args, "config_likelihood", None) or hooks_class(cls).likelihood
    binary = all(bool(((rows == 0) | (rows == 1)).all()) for x in (raw.x_train, raw.x_test) for rows in chunks(x))
    transform = args.transform or (DEFAULT_TRANSFORMS.get(likelihood, "none") if raw.levels and not binary else "none")
    args.transform = transform
    x_train, y_train, x_test, y_test = prepare(raw, transform, args.seed)
    standardization = None
    if transform == "standardize":
        if likelihood in LIKELIHOODS and likelihood != "gaussian":
            gaussian = "gaussian" in likelihood_choices(cls)
            raise DataError(f"--transform standardize gives values of either sign, outside a {likelihood} likelihood's "
                            "support; " + ("use --likelihood gaussian" if gaussian else
                                           f"{cls.name} has no Gaussian likelihood: leave out --transform standardize"))
        x_train, x_test, _, standardization = standardize(x_train, x_test, raw.levels, args.dataset,
                                                          shape=tuple(raw.shape))
    if likelihood in LIKELIHOODS:  # dynamic binarization's training data are probabilities, binarized per batch
        checked = {"test": x_test} if transform == "dynamic-binarize" else {"training": x_train, "test": x_test}
        for split, x in checked.items():
            validate_support(x, likelihood, f"{args.dataset} ({split} set, --transform {transform})",
                             likelihood_choices(cls))
    shape, kind = tuple(raw.shape), "images" if len(raw.shape) == 2 else "vectors"
    if "seq_len" in fields:
        x_train, x_test, kind = as_sequences(x_train, shape), as_sequences(x_test, shape), "sequences"
    train, test = (x_train,), (x_test,)
    if is_conditional(cls):
        if y_train is None:
            raise DataError(f"--dataset {args.dataset} has no labels, and {cls.name} is conditional on a label; use a "
                            "labelled data set (mnist, digits, idx:DIR, or an .npz with y and y_test)")
        train, test = (x_train, y_train), (x_test, y_test)
    return Data(train, test, y_test, shape, kind, raw.levels if transform == "dequantize" else None, raw.num_classes,
                dynamic_binarize if transform == "dynamic-binarize" else None, standardization)


# Fitting ----------------------------------------------------------------------------------------------
def build_model(cls: type, args: argparse.Namespace, data: Data) -> LatentVariableModel:
    """``cls(Config(...))`` from the config flags and the data; a config the model refuses, one too large to
    build (``aevb.model.build``), or an ``__init__`` that sets modules before ``nn.Module``'s, is a UsageError."""
    values = {f.name: getattr(args, f"config_{f.name}") for f in config_fields(cls)}
    values.update(data.config_values([f.name for f in dataclasses.fields(cls.Config)]))
    try:
        return build(cls, cls.Config(**values))
    except ValueError as e:
        raise UsageError(f"{cls.name}: {e}") from None
    except AttributeError as e:  # torch's "cannot assign module before Module.__init__() call"
        if "before Module.__init__() call" not in str(e):
            raise
        raise UsageError(f"{cls.name}: its __init__ sets a module or parameter before super().__init__(config); call "
                         "super().__init__(config) first") from None


def check_batch_size(args: argparse.Namespace, data: Data) -> None:
    """A batch larger than the training set would be the whole set under another name: refused, with the size."""
    examples, processes = len(data.train[0]), distributed.world_size()
    if args.batch_size % processes:
        raise UsageError(f"--batch-size {args.batch_size} is the global batch and must divide among the {processes} "
                         f"processes; use a multiple of {processes}, e.g. {args.batch_size - args.batch_size % processes or processes}")
    if args.batch_size > examples:
        raise UsageError(f"--batch-size {args.batch_size} exceeds the {examples} training examples; use --batch-size "
                         f"{examples} or less")


def implausible(summary: dict, data: Data) -> list[str]:
    """A warning if the test ELBO is finite but cannot be right: below ``IMPLAUSIBLE_NATS_PER_DIMENSION`` nats per
    dimension of x (a VAE with --lr 1e3 reaches -1e31). There is no reference to compare with, only this floor."""
    floor = IMPLAUSIBLE_NATS_PER_DIMENSION * data.test[0][0].numel()
    if summary["test_elbo"] >= floor:
        return []
    return [f"the test ELBO is {summary['test_elbo']:.4g} nats, below {IMPLAUSIBLE_NATS_PER_DIMENSION:g} per "
            "dimension of x: the fit failed; fit again with a lower --lr or with --clip-grad NORM"]


def trained_with(versions: dict) -> str:
    """'aevb X, torch Y' of recorded software versions, what a fit's numbers depend on beside its flags (an aevb
    run from a source tree that was never installed does not know its version, which is then left out)."""
    return ", ".join(f"{name} {versions[name]}" for name in ("aevb", "torch")
                     if versions.get(name, "unknown") != "unknown")


def trained_with_other_software(out: Path, software: list[str]) -> list[str]:
    """A warning if the run in ``out`` was trained by more than one aevb or torch: those that fitted it
    (config.json) and those of every process that trained it (``software``, its checkpoints' list). Such a run is
    not promised to end bit for bit as an uninterrupted one would."""
    used = list(dict.fromkeys(filter(None, [trained_with(run_record(out)["versions"]), *software])))
    if len(used) < 2:
        return []
    return [f"the run was trained with more than one aevb or torch ({'; '.join(used)}), so it may not end bit for "
            "bit as an uninterrupted fit would"]


FLOAT32_MAX = torch.finfo(torch.float32).max  # a recorded mean or standard deviation beyond it is not one aevb wrote
LARGE_VALUES = 10.0  # data beyond this, given to networks unscaled, are a likely cause of a non-finite first ELBO
FIRST_BATCH = 7  # examples checked before training: a size unlikely to equal a dimension, so that a factor or
# term of the wrong shape cannot hide by broadcasting against the batch


def check_first_batch(model: LatentVariableModel, data: Data, args: argparse.Namespace) -> None:
    """Before training, on the first ``FIRST_BATCH`` training examples, on copies of the model and a fork of the
    random state (training draws as it would without it): the contract's checks that hold for any model and batch
    (``aevb.testing.BEFORE_FIT``), then one ELBO with ``--estimator``. A broken contract (a factor of the wrong
    shape, z drawn without ``rsample``, a parameter in neither group, an ``encode`` that gives no code per example)
    is one line naming the check, not a traceback or a wrong number after training; a model's ValueError (data
    outside its support, an unknown estimator) is one line about the data."""
    batch = tuple(t[:FIRST_BATCH] for t in data.train)
    options = {} if args.estimator is None else {"estimator": args.estimator}
    with torch.random.fork_rng(), evaluation.eval_mode(model) as device:
        batch = tuple(t.to(device) for t in (data.transform(batch) if data.transform else batch))
        described = (f"--dataset {args.dataset} ({data.kind}, one example of shape {tuple(data.shape)}, "
                     f"{str(batch[0].dtype).removeprefix('torch.')} batches)")
        try:
            testing.check_model(model, batch, num_samples=5, checks=testing.BEFORE_FIT)
            model.elbo(*batch, **options)
        except testing.ModelCheckError as e:
            if isinstance(e.__cause__, ValueError):  # the model's word on the data (aevb.model: its support)
                raise UsageError(f"{model.name} cannot fit {described}: {registry.first_line(e.__cause__)}") from None
            reach = batch[0].abs().max().item() if batch[0].is_floating_point() else 0.0
            scale = (f"; the data's values reach {reach:g}, and networks are built for values near unit scale: "
                     "standardize them (--transform standardize)"
                     if "not finite" in str(e) and reach > LARGE_VALUES and args.transform != "standardize"
                     else " (docs/models.md states the contract)")
            raise UsageError(f"{model.name} breaks the model contract on {len(batch[0])} examples of {described}: "
                             f"{registry.first_line(e)}{scale}") from None
        except (ValueError, RuntimeError, NotImplementedError) as e:
            raise UsageError(f"{model.name} cannot fit {described}: {registry.first_line(e)}") from None


NOT_SETTINGS = ("device", "threads", "checkpoint_every", "compile", "tensorboard")  # what a resumed run may change
RESTART = "delete it to start the run over, or fit into another --out"  # what to do about a damaged checkpoint


def flags_of(args: argparse.Namespace) -> dict:
    """The parsed flags as JSON (before the fit resolves defaults): what config.json records and resume compares."""
    return json.loads(json.dumps(vars(args), default=str))


def compare_flags(recorded: dict, requested: dict, out: Path) -> None:
    """UsageError naming the first flag whose value differs from the run's (interrupted or complete)."""
    for key in sorted(set(recorded) | set(requested)):
        if key not in NOT_SETTINGS and recorded.get(key) != requested.get(key):
            flag = "--" + key.removeprefix("config_").replace("_", "-")
            raise UsageError(f"--resume: {flag} is {requested.get(key)!r} here but {recorded.get(key)!r} in the run "
                             f"{out}; resume with its settings (aevb resume {out}) or choose another --out")


def run_fit(cls: type, args: argparse.Namespace, out: Path, progress: bool = True, resume: bool = False) -> dict:
    """Fit ``cls`` with the parsed flags into the run directory ``out``; returns the summary.

    ``resume``: continue the incomplete run in ``out`` from its checkpoint (the same flags, bar ``NOT_SETTINGS``),
    or return a complete one's summary without fitting again. Everything is checked before ``out`` is written:
    a fit that fails before training leaves nothing; one that stops later (a signal, divergence, a crash) leaves
    the run marked incomplete, with the checkpoint of its last finished epoch (or step).
    """
    out = Path(out)
    requested = flags_of(args)
    main = distributed.rank() == 0
    with contextlib.ExitStack() as lock:  # under torchrun, rank 0 writes the run directory; every rank learns if it can
        distributed.on_rank_0(lambda: lock.enter_context(runs.locked(out)))
        state = distributed.together(lambda: check_run_dir(out, cls, requested, resume))
        if resume and state == "complete":
            summary = read_json(out / "summary.json")
            if not isinstance(summary, dict):
                raise UsageError(f"{out / 'summary.json'} is damaged (not a JSON object); {runs.REFIT}")
            return summary
        if resume and state == "incomplete" and not (out / runs.CHECKPOINT).is_file():
            # stopped before its first checkpoint: it starts over
            distributed.on_rank_0(lambda: runs.remove_run(out))
            state = None
        with torch_threads(None):  # fit_into sets them; the caller's are restored
            return fit_into(cls, args, out, requested, progress and main, resume and state == "incomplete")


def check_run_dir(out: Path, cls: type, requested: dict, resume: bool) -> str | None:
    """The status of ``out`` (None, 'incomplete' or 'complete'), refused in one line where it cannot take this fit:
    an interrupted run without ``resume``, or with another model or other flags."""
    state = runs.status(out)
    if state == "incomplete" and not resume:
        raise UsageError(f"--out {out} holds an interrupted run; continue it with --resume (or aevb resume {out}), "
                         "or choose another --out")
    if resume and state is not None:  # a complete run is returned as it is: only for its model and flags
        record = run_record(out)
        if record["model"] != registry.reference(cls):
            raise UsageError(f"--resume: the model is {registry.reference(cls)} here but {record['model']} in the run "
                             f"{out}; resume with its model (aevb resume {out}) or choose another --out")
        compare_flags(recorded_flags(fit_parser(cls, f"aevb fit {cls.name}"), record["args"]), requested, out)
    return state


def prepare_fit(cls: type, args: argparse.Namespace, resumed: Path | None) -> tuple[Hooks, Data, torch.device,
                                                                                  LatentVariableModel]:
    """The hooks, data, device and model of a fit (of the run ``resumed`` continues, if any), everything checked;
    the model's initialization drawn from ``--seed`` (the same on every rank). DataError where a resumed run's data
    no longer give the test set it began with: its training would go on on other data."""
    resume = resumed is not None
    hooks = hooks_class(cls)(args)
    args.schedule = args.schedule or Schedule.parse("joint")
    data = hooks.data() or load_data(args, cls)
    if args.transform == "dequantize" and data.levels is None and not resume:  # runs from before go on as they were
        raise DataError("--transform dequantize spreads integer pixels over their bins, and these data are floats; "
                        "use --transform none (or store the pixels as integers)")
    check_batch_size(args, data)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(cls, args, data).to(device)
    data = in_model_dtype(data, model)
    if resume and test_set_changed(run_record(resumed), data):
        raise DataError(f"--dataset {args.dataset} no longer gives the test set the run {resumed} began with (the data "
                        "changed since, or this software splits or transforms them otherwise); resume it on the data "
                        "it began with, or fit afresh")
    check_first_batch(model, data, args)
    return hooks, data, device, model


def in_model_dtype(data: Data, model: LatentVariableModel) -> Data:
    """The data's real-valued tensors in the model's floating dtype (float64 for a model built in double
    precision; the data are read as float32, so a float64 file's values keep float32's precision); labels as
    they are."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if dtype == torch.float32:
        return data

    def cast(t: Tensor | DiskRows) -> Tensor | DiskRows:
        if isinstance(t, DiskRows):
            return t.map(lambda rows: rows.to(dtype))
        return t.to(dtype) if t.is_floating_point() else t

    return dataclasses.replace(data, train=tuple(map(cast, data.train)), test=tuple(map(cast, data.test)))


def fit_into(cls: type, args: argparse.Namespace, out: Path, flags: dict, progress: bool, resume: bool) -> dict:
    main = distributed.rank() == 0
    hooks, data, device, model = distributed.together(lambda: prepare_fit(cls, args, out if resume else None))
    data = dataclasses.replace(data, train=tuple(t.to(device) for t in data.train),
                               test=tuple(t.to(device) for t in data.test))
    with torch.no_grad():
        hooks.initialize(model, data)
    if distributed.rank():  # each rank its own draws of z, dropout and binarization; rank 0 those of one process
        torch.manual_seed(args.seed + 1_000_003 * distributed.rank())
    # one thread unless the step holds enough work (aevb.threads); run_fit restores the caller's count
    torch.set_num_threads(args.threads or default_threads(model, tuple(t[:args.batch_size] for t in data.train),
                                                          args.estimator))
    trainer = Trainer(model, args.schedule, args.lr, args.batch_size, args.estimator, args.seed, progress,
                      torch_compile=args.compile, clip_grad=args.clip_grad, lr_milestones=args.lr_milestones,
                      lr_gamma=args.lr_gamma)
    total = args.steps or args.epochs * math.ceil(len(data.train[0]) / args.batch_size)
    metrics_path = out / "metrics.jsonl"
    progress_so_far = {"lines": 0, "seconds": 0.0, "software": []}
    before = runs.snapshot(out) if resume else {}  # what a resumed run holds: a user's file among it stays theirs
    if resume:
        progress_so_far.update(distributed.together(lambda: resume_from(out / runs.CHECKPOINT, model, trainer, hooks)))
        distributed.on_rank_0(lambda: runs.keep_lines(
            metrics_path, progress_so_far["lines"],
            f"delete {out / runs.CHECKPOINT} to start the run over, or fit into another --out"))
    else:
        distributed.on_rank_0(lambda: start_run(out, cls, model, flags, data))
    progress_so_far["software"] = list(dict.fromkeys([*progress_so_far["software"],  # and this process's
                                                      trained_with(runs.software_versions())]))
    start = time.perf_counter()
    logged = distributed.on_rank_0(
        lambda: [tensorboard_logger(out, resume, progress_so_far["lines"])] if args.tensorboard else []) or []

    def evaluate(model: LatentVariableModel) -> dict:
        return {"test_elbo": evaluation.test_elbo(model, data.test), **hooks.metrics(model, data, trainer.step_count)}

    # under torchrun rank 0 alone writes, and every rank learns whether it could (``distributed.on_rank_0``): a full
    # disk on rank 0 must not leave the others waiting in the next step's collective
    def write_metrics(records: list[dict]) -> None:
        distributed.on_rank_0(lambda: runs.append_jsonl(metrics_path, records))
        progress_so_far["lines"] += len(records)

    def checkpoint(trainer: Trainer) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise Diverged(trainer.step_count, trainer.epoch, "a parameter")
        seconds = progress_so_far["seconds"] + time.perf_counter() - start
        state = trainer.state_dict()  # on every rank: it gathers their random states
        distributed.on_rank_0(lambda: runs.save_checkpoint(out, {
            "model": model.checkpoint(), "trainer": state, "hooks": hooks.state_dict(),
            "progress": {**progress_so_far, "seconds": seconds}}))

    with stop_on_signals(trainer):
        try:
            if trainer.step_count < total:  # else resumed after its last step: stopped in the final evaluation
                trainer.fit(data.train, steps=total - trainer.step_count, evaluate=evaluate,
                            eval_every=hooks.eval_every, transform=data.transform,
                            callbacks=[write_metrics, *logged, *hooks.callbacks(model)], checkpoint=checkpoint,
                            checkpoint_every=args.checkpoint_every)
            if trainer.stopping():  # asked during the last step, which then checkpointed as the last
                raise Interrupted(trainer.stop_signal, trainer.step_count)
        except BaseException as e:
            for logger in logged:
                logger.close()
            kept = (out / runs.CHECKPOINT).is_file()
            if not kept and main:  # stopped before its first checkpoint: nothing to resume from, nothing is kept
                runs.remove_run(out)
            if not isinstance(e, Diverged):
                raise
            advice = f"fit again with a lower --lr (now {args.lr:g}) or with --clip-grad NORM"
            if not kept:
                error = UsageError(f"training diverged: {e}; nothing was kept; {advice}")
            else:
                step = runs.load_file(out / runs.CHECKPOINT)["trainer"]["step"]
                error = UsageError(f"training diverged: {e}; {out} keeps its last finite checkpoint (step {step}); "
                                   f"{advice}, into another --out (or delete {out} first)")
            error.agreed = True  # every rank diverges at the same step: their summed terms are the same numbers
            raise error from None
    seconds = progress_so_far["seconds"] + time.perf_counter() - start
    history = distributed.broadcast(distributed.on_rank_0(lambda: runs.read_jsonl(metrics_path)))
    summary = {"model": registry.reference(cls), "dataset": args.dataset, "transform": args.transform or "none",
               "schedule": str(args.schedule), "epochs": history[-1]["epoch"], "steps": trainer.step_count,
               "train_elbo": last_epoch_mean(history, "train_elbo", len(data.train[0]), args.batch_size),
               **evaluation.evaluate(model, data.test, args.iwae, data.levels, args.seed, progress,
                                     data.log_evidence_offset)}
    summary.update(hooks.summary(model, data, history, summary))
    warnings = [*summary.pop("warnings", []), *implausible(summary, data),  # the model's own, then the generic ones
                *(trained_with_other_software(out, progress_so_far["software"]) if resume else [])]
    summary.update({"warnings": warnings} if warnings else {})
    summary.update(train_seconds=seconds, device=device_name(device), threads=torch.get_num_threads(),
                   **({"compiled": True} if args.compile else {}),
                   **({"processes": distributed.world_size()} if distributed.active() else {}))
    if main:
        hooks.figures(model, history, data, out)
        try:
            runs.save_run(out, model.cpu(), summary, before)
            # only now: a resumed writer keeps what was logged at the last record's step, so figures logged before a
            # stop here would be there twice once the resumed fit logged them again
            for logger in logged:
                logger.add_figures(trainer.step_count)
        finally:
            for logger in logged:
                logger.close()
    return summary


def start_run(out: Path, cls: type, model: LatentVariableModel, flags: dict, data: Data) -> None:
    """A new run in ``out`` (empty, or an earlier run of aevb's, replaced): marked incomplete, with its config."""
    if out.exists() and any(out.iterdir()):
        runs.remove_run(out)
    out.mkdir(exist_ok=True)
    runs.mark(out, "incomplete", model=registry.reference(cls))
    runs.write_json(out / "config.json", run_config(cls, model, flags, data))


def last_epoch_mean(history: list[dict], key: str, examples: int, batch_size: int) -> float:
    """``key`` over the last epoch's examples: its record, or where records are per step (factor analysis), its
    steps' weighted by their batches' sizes (an epoch's last batch holds what is left), as an epoch's record is."""
    last = [r for r in history if r["epoch"] == history[-1]["epoch"]]
    epoch = batch_sizes(examples, batch_size)
    sizes = [epoch[(r["step"] - 1) % len(epoch)] for r in last]
    return sum(size * r[key] for size, r in zip(sizes, last)) / sum(sizes)


def resume_from(path: Path, model: LatentVariableModel, trainer: Trainer, hooks: Hooks) -> dict:
    """Load the checkpoint ``path`` of an interrupted run into the model, the trainer and the hooks; returns its progress
    (``lines`` of metrics.jsonl, ``seconds`` of training, and the ``software`` that trained it, ``trained_with``
    of each process: none in a checkpoint of an earlier aevb). One that does not fit them is damaged: UsageError."""
    checkpoint = runs.load_file(path, advice=RESTART)
    try:
        model.load_state_dict(checkpoint["model"]["state_dict"])
        trainer.load_state_dict(checkpoint["trainer"])
        hooks.load_state_dict(checkpoint.get("hooks", {}))
        progress = checkpoint["progress"]
        software = progress.get("software", [])
        if not (isinstance(software, list) and all(isinstance(s, str) for s in software)):
            raise TypeError(f"its software is {software!r:.100}, not a list of versions")
        return {"lines": int(progress["lines"]), "seconds": float(progress["seconds"]), "software": software}
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        raise UsageError(f"{path} is damaged ({type(e).__name__}: {registry.first_line(e)}); {RESTART}") from None


def tensorboard_logger(out: Path, resume: bool, kept_lines: int):
    """TensorBoard's writer into the run directory; on resume, what was logged after the checkpoint is purged."""
    from aevb.tensorboard import TensorBoardLogger

    if not resume:
        return TensorBoardLogger(out)
    kept = runs.read_jsonl(out / "metrics.jsonl")[:kept_lines]
    return TensorBoardLogger(out, purge_step=kept[-1]["step"] + 1 if kept else 0)  # 0: none was kept


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT and SIGTERM stop training at the next step boundary, with a checkpoint (``Trainer.request_stop``);
    a second SIGINT interrupts at once. Outside the main thread, signals are left as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def request(signum: int, frame) -> None:
        if trainer.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.request_stop(signum)

    for s in previous:
        signal.signal(s, request)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def resolve_device(text: str) -> torch.device:
    """``--device``: auto (the GPU when there is one), cpu, cuda, cuda:N or mps; UsageError if it is not here."""
    if text == "auto":
        return default_device()
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text}: use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
                 "mps": torch.backends.mps.is_available()}.get(device.type, False)
    if not available:
        raise UsageError(f"--device {text} is not available on this machine; use --device auto or cpu")
    return device


def test_fingerprint(data: Data) -> str:
    """SHA-256 of the test set as the model sees it (every tensor of ``data.test``: dtype, shape and values), by
    which a run read back knows whether it is evaluated on the test set it was fitted with."""
    digest = hashlib.sha256()
    for t in data.test:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())  # its bytes, whatever its dtype (bfloat16 too)
    return digest.hexdigest()


def test_set_changed(record: dict, data: Data) -> list[str]:
    """A warning where ``data`` are not the test set a run was fitted with (``record``, its config.json: the
    ``test_sha256`` of its data; runs of earlier versions have none): the file changed, or it is split or transformed
    otherwise, so the numbers are of other data than the fit's."""
    recorded = record["data"].get("test_sha256")
    if recorded is None or recorded == test_fingerprint(data):
        return []
    return [f"the test set of --dataset {record['args']['dataset']} is not the one this run was fitted with (the data "
            "changed since, or this software splits or transforms them otherwise): these numbers are of other data "
            "than the fit's"]


def run_config(cls: type, model: LatentVariableModel, flags: dict, data: Data) -> dict:
    """config.json: how to import the model, its config, every flag, the data's shape and range, and the versions
    of the software that fitted it."""
    standardized = {} if data.standardization is None else {
        "standardization": {"mean": data.standardization[0].tolist(), "std": data.standardization[1].tolist()}}
    return {"model": registry.reference(cls), "config": dataclasses.asdict(model.config), "args": flags,
            "data": {"shape": list(data.shape), "kind": data.kind, "levels": data.levels, "num_classes": data.num_classes,
                     "range": grey_range(data.test[0]), **standardized, "test_sha256": test_fingerprint(data)},
            "versions": runs.software_versions()}


def resolve_paths(args: argparse.Namespace) -> None:
    """Make the data paths of parsed flags absolute, so that a run can be evaluated from any working directory;
    MNIST's folder from $AEVB_DATA_DIR is recorded as if it had been --data-dir."""
    args.dataset = absolute_dataset(args.dataset)
    data_dir = args.data_dir or (os.environ.get("AEVB_DATA_DIR") if args.dataset == "mnist" else None)
    args.data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else None


def parse_fit_args(cls: type, argv: Sequence[str]) -> argparse.Namespace:
    """``aevb fit MODEL argv`` parsed, with data paths made absolute."""
    args = fit_parser(cls, f"aevb fit {cls.name}").parse_args(list(argv))
    resolve_paths(args)
    return args


def fit_run(model: str | type, out: str | Path, progress: bool = True, resume: bool = False, **flags) -> dict:
    """``aevb fit`` from Python: ``fit_run(MyModel, "runs/mine", dataset="x.npy", latent_dim=3, schedule="e-step")``.

    ``model`` is a class or anything ``aevb.registry.resolve`` takes; each keyword is a flag (``latent_dim=3``
    is ``--latent-dim 3``; ``True`` is a switch, ``False`` its ``--no-`` form). Writes the run directory ``out``
    (``resume``: continues the incomplete run there); returns the summary. A keyword that is no flag is a
    TypeError, a bad value a ValueError; the caller's random state is restored afterwards.
    """
    cls = registry.resolve(model) if isinstance(model, str) else model
    parser = fit_parser(cls, f"fit_run({cls.__name__})", KeywordParser)
    actions = {option: action for action in parser._actions for option in action.option_strings}
    argv = []
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if flag not in actions:
            reference = registry.reference(cls)
            command = f"aevb fit --model {reference}" if ":" in reference else f"aevb fit {reference}"
            raise TypeError(f"fit_run() got an unexpected keyword {key!r}: {cls.__name__} has no flag {flag} "
                            f"({command} --help lists them)")
        if value is True or value is False and isinstance(actions[flag], argparse.BooleanOptionalAction):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif value is not False and value is not None:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)]
    args = parser.parse_args(argv)
    resolve_paths(args)
    with torch.random.fork_rng():  # seeded by --seed; the caller's random state is left alone
        return {**run_fit(cls, args, Path(out), progress, resume), "run_dir": str(out)}


class KeywordParser(argparse.ArgumentParser):
    """``fit_run``'s parser: a bad value is a ValueError, not a usage message and a SystemExit."""

    def error(self, message: str) -> typing.NoReturn:
        raise ValueError(f"fit_run: {message}")


# Reading a run back ---------------------------------------------------------------------------------------
@dataclass
class Run:
    """A finished run: its model (in eval mode), class, flags and the hooks that fitted it."""

    model: LatentVariableModel
    cls: type
    args: argparse.Namespace
    config: dict

    @functools.cached_property
    def hooks(self) -> Hooks:
        """One instance, so that what its ``data()`` learns (factor analysis: the standardization) its ``metrics``
        and ``summary`` have."""
        return hooks_class(self.cls)(self.args)

    def data(self) -> Data:
        """The run's data, rebuilt from its recorded flags (the same test set, the same seed)."""
        return self.hooks.data() or load_data(self.args, self.cls)


def load_run(run_dir: str | Path) -> Run:
    """The model and settings of a finished run directory; UsageError, naming the file, if it is not one or is
    damaged (its config.json and model.pt must agree)."""
    run_dir = Path(run_dir)
    if run_status(run_dir) != "complete":
        raise UsageError(f"{run_dir} is an interrupted run, not a finished one; finish it with aevb resume {run_dir}")
    record = run_record(run_dir)
    cls = recorded_class(record, run_dir / "config.json")
    args = parse_recorded_args(cls, record, run_dir / "config.json")
    model = runs.load_checkpoint(run_dir / "model.pt", cls)
    saved = json.loads(json.dumps(dataclasses.asdict(model.config), default=str))  # as config.json records it
    differing = sorted(k for k in set(saved) | set(record["config"]) if saved.get(k) != record["config"].get(k))
    if differing:
        raise UsageError(f"{run_dir / 'config.json'} disagrees with model.pt ({differing[0]} is "
                         f"{record['config'].get(differing[0])!r} there, {saved.get(differing[0])!r} in model.pt); "
                         f"{runs.REFIT}")
    return Run(model.eval(), cls, args, record)


def run_status(run_dir: Path) -> str:
    """'complete' or 'incomplete': the status of the run directory ``run_dir`` that a command reads; UsageError if
    there is none, or it is not an aevb run directory."""
    advice = "fit the run again, or name another run directory"
    state = runs.status(run_dir, advice)
    if state is None:
        raise UsageError(f"{run_dir}: {'an empty folder' if run_dir.exists() else 'no such run directory'}; {advice}")
    return state


def is_standardization(record, size: int) -> bool:
    """Whether config.json's ``standardization`` holds a mean and a positive standard deviation, ``size`` numbers
    each within float32's range."""
    def numbers(values, positive: bool) -> bool:
        return isinstance(values, list) and len(values) == size and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= FLOAT32_MAX
            and (v > 0 or not positive) for v in values)

    return isinstance(record, dict) and numbers(record.get("mean"), False) and numbers(record.get("std"), True)


def run_record(run_dir: Path) -> dict:
    """config.json of a run (``run_config``): its model, config, flags and data; UsageError naming the file if it
    is missing or damaged."""
    path = run_dir / "config.json"
    record = read_json(path)
    fields = {"model": str, "config": dict, "args": dict, "data": dict}
    wrong = [k for k, kind in fields.items() if not isinstance(record, dict) or not isinstance(record.get(k), kind)]
    if wrong:
        raise UsageError(f"{path} is damaged ({wrong[0]!r} is missing or not a {fields[wrong[0]].__name__}); "
                         f"{runs.REFIT}")
    data = record["data"]
    shape = data.get("shape")
    if not (isinstance(shape, list) and 1 <= len(shape) <= 2 and all(isinstance(n, int) and n > 0 for n in shape)
            and data.get("kind") in KINDS and isinstance(data.get("num_classes"), (int, type(None)))):
        raise UsageError(f"{path} is damaged (its data are not a shape, kind and number of classes); {runs.REFIT}")
    versions = record.setdefault("versions", {})  # absent from the runs of earlier versions, as is the range
    if not (isinstance(versions, dict) and all(isinstance(v, str) for v in versions.values())):
        raise UsageError(f"{path} is damaged (its versions are not names and version strings); {runs.REFIT}")
    grey = data.setdefault("range", [0.0, 1.0])
    if not (isinstance(grey, list) and len(grey) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                              for v in grey) and grey[0] < grey[1]):
        raise UsageError(f"{path} is damaged (its data's range is not two finite numbers, low < high); {runs.REFIT}")
    if not re.fullmatch(r"[0-9a-f]{64}", str(data.get("test_sha256", "0" * 64))):
        raise UsageError(f"{path} is damaged (its test set's test_sha256 is not a SHA-256 in hexadecimal); "
                         f"{runs.REFIT}")
    if data.get("standardization") is not None and not is_standardization(data["standardization"], math.prod(shape)):
        raise UsageError(f"{path} is damaged (its data's standardization is not a mean and a positive standard "
                         f"deviation for each of the {math.prod(shape)} values of an example); {runs.REFIT}")
    return record


def recorded_class(record: dict, path: Path) -> type:
    """The model class a run's config.json names; UsageError naming the file if it cannot be found or imported."""
    try:
        return registry.resolve(record["model"])
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def recorded_flags(parser: argparse.ArgumentParser, flags: dict) -> dict:
    """A run's recorded ``flags`` (config.json's args, which hold every flag the fit had), each of the fit flags
    (``parser``, ``fit_parser`` of the run's model) that the run lacks at its default: a flag added to aevb since the run was fitted, whose default is what aevb
    did before it had the flag. Never the fields of the model's Config (``config_*``), which are the model's own:
    ``parse_recorded_args`` refuses a run whose Config has changed."""
    defaults = flags_of(parser.parse_args([]))
    return {**{k: v for k, v in defaults.items() if not k.startswith("config_")}, **flags}


def parse_recorded_args(cls: type, record: dict, path: Path) -> argparse.Namespace:
    """A run's recorded flags (``recorded_flags``) as the namespace the fit parsed: every value goes through its
    flag's type again. UsageError naming ``path`` if they are not ``cls``'s flags or a value is one its flag
    refuses."""
    parser = fit_parser(cls, f"aevb fit {cls.name}")
    flags = recorded_flags(parser, record["args"])
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    fixed = {k: v for k, v in vars(parser.parse_args([])).items() if k not in actions}  # set without a flag
    missing, unknown = sorted(actions.keys() - flags.keys()), sorted(flags.keys() - actions.keys() - fixed.keys())
    changed = [key for key in missing + unknown if key.startswith("config_")]
    if changed:  # the class's Config gained or lost a field since the fit: the run is as it was written
        field = changed[0].removeprefix("config_")
        now = f"has no field {field} now" if changed[0] in unknown else f"has a field {field} it did not have"
        raise UsageError(f"{path}: the run was fitted with another {cls.name} Config (the class {now}); restore "
                         f"the Config it had, or {runs.REFIT}")
    fitted_by = record["versions"].get("aevb")
    if unknown and fitted_by not in (None, "unknown", aevb.__version__):
        raise UsageError(f"{path}: the run was fitted by aevb {fitted_by}, whose flag {unknown[0]} this aevb "
                         f"({aevb.__version__}) does not have; read it with aevb {fitted_by}, or {runs.REFIT}")
    if unknown:
        raise UsageError(f"{path} is damaged (its args have an unknown {unknown[0]}, not a flag of {cls.name}); "
                         f"{runs.REFIT}")
    values = dict(fixed)
    for dest, value in flags.items():
        if dest in fixed:
            continue
        try:
            values[dest] = recorded_value(actions[dest], value)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            raise UsageError(f"{path} is damaged ({actions[dest].option_strings[0]} is {value!r}, not a value the flag "
                             f"takes); {runs.REFIT}") from None
    return argparse.Namespace(**values)


def recorded_value(action: argparse.Action, value: Any) -> Any:
    """The value ``action`` parsed, from its JSON in config.json: its type applied to the value's text again (a list
    is its comma-separated items); TypeError or ValueError for a value it would not have given."""
    if value is None and action.default is None:
        return None
    if isinstance(value, list) != isinstance(action.default, tuple):  # only a tuple flag's value is a list
        raise TypeError(value)
    if action.nargs == 0 or action.type is None:  # a switch, or a string flag: the value as it is
        if not isinstance(value, bool if action.nargs == 0 else str):
            raise TypeError(value)
        parsed = value
    else:
        parsed = action.type(",".join(map(str, value)) if isinstance(value, list) else str(value))
    if action.choices is not None and parsed not in action.choices:
        raise ValueError(value)
    return parsed


def run_and_data(run_dir: str | Path) -> tuple[Run, Data]:
    """A finished run and its data, on the default device; DataError if the data have changed since the fit."""
    run = load_run(run_dir)
    data = run.data()
    fields = [f.name for f in dataclasses.fields(run.cls.Config)]
    changed = {k: v for k, v in data.config_values(fields).items() if getattr(run.model.config, k) != v}
    if changed:
        name, value = next(iter(changed.items()))
        raise DataError(f"--dataset {run.args.dataset} has changed since {run_dir} was fitted: its {name} is now {value}, "
                        f"the model's {getattr(run.model.config, name)}; evaluate on the data it was fitted to")
    run.model.to(default_device())
    return run, in_model_dtype(data, run.model)


def check_integers(function: str, **arguments: tuple[Any, Callable[[str], int]]) -> None:
    """A Python caller's integer arguments, each through its flag's parser (name -> (value, parser)): TypeError
    or ValueError naming it, as ``fit_run`` gives, where the command line would refuse it."""
    for name, (value, parse) in arguments.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{function}: {name} must be an integer, got {value!r}")
        try:
            parse(str(value))
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{function}: {name} {e}") from None


def evaluate_run(run_dir: str | Path, num_samples: int, refine_steps: int = 0, progress: bool = False,
                 seed: int | None = None) -> dict:
    """Test ELBO, the K-sample IWAE bound (and bits/dim) of a run on its own test set, with the model's own test
    metrics; with ``refine_steps``, also the test ELBO after that many local E-steps from q_phi (semi-amortized
    inference, ``aevb.diagnostics``) beside the amortized one, with the same draws, and the K-sample IWAE bound
    with that q* as proposal (``iwae_log_likelihood_refined``): a bound on the same log p(x), tighter where q* is
    nearer p(z|x) than q_phi is. The draws are seeded by ``seed`` (in the result), by default the run's own, with
    which the numbers are the fit's; another seed gives independent estimates (their spread is the Monte Carlo
    noise). The test set is the run's whatever the seed."""
    check_integers("evaluate_run", num_samples=(num_samples, iwae_samples), refine_steps=(refine_steps, local_steps),
                   **({"seed": (seed, random_seed)} if seed is not None else {}))
    run, data = run_and_data(run_dir)
    seed = run.args.seed if seed is None else seed
    if refine_steps:  # first: a model it cannot refine is refused before any evaluation (each part its own seed)
        device = next(run.model.parameters()).device
        reason = diagnostics.not_covered(run.model, [t[:100].to(device) for t in data.test])
        if reason is not None:
            raise UsageError(f"--refine: {reason}, so it has no local E-steps; evaluate it without --refine")
        settings = diagnostics.LocalEStep(steps=refine_steps)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            columns, _ = diagnostics.per_example(run.model, data.test, settings, num_samples, progress=progress)
    summary = {"model": run.config["model"], "seed": seed,
               **evaluation.evaluate(run.model, data.test, num_samples, data.levels, seed, progress,
                                     data.log_evidence_offset)}
    with evaluation.eval_mode(run.model):
        extra = run.hooks.metrics(run.model, data, None)
    extra = {k: v.item() if isinstance(v, Tensor) and v.numel() == 1 else v for k, v in extra.items()}
    summary.update({k: v for k, v in extra.items() if isinstance(v, (int, float, str))})
    if refine_steps:
        gain, gain_se = diagnostics.mean_and_se(columns["elbo_optimal"] - columns["elbo_amortized"])
        # the pair from the same draws, and their difference: test_elbo (one draw, as plain eval's) is not its baseline
        summary.update(refine_steps=refine_steps, test_elbo_amortized=columns["elbo_amortized"].mean().item(),
                       test_elbo_refined=columns["elbo_optimal"].mean().item(), refinement_gain=gain,
                       refinement_gain_se=gain_se, refine_q_phi_kept=int(columns["q_phi_kept"].sum()))
        if num_samples:
            summary["iwae_log_likelihood_refined"] = columns["iwae"].double().mean().item()
            if data.levels is not None:
                summary["bits_per_dim_refined"] = evaluation.bits_per_dim(
                    summary["iwae_log_likelihood_refined"], data.test[0][0].numel(), data.levels,
                    data.log_evidence_offset)
    warnings = test_set_changed(run.config, data) + implausible(summary, data)
    return {**summary, **({"warnings": warnings} if warnings else {})}


def diagnose_run(run_dir: str | Path, examples: int, num_samples: int, settings: diagnostics.LocalEStep,
                 seed: int = 0, progress: bool = False) -> dict:
    """``aevb.diagnostics.diagnose`` on ``examples`` test examples of a run (a permutation drawn from ``seed``;
    all of them if the test set is smaller), written to RUN_DIR/diagnostics.json and diagnostics.png."""
    from aevb import plotting

    check_integers("diagnose_run", examples=(examples, positive_int), num_samples=(num_samples, positive_iwae_samples),
                   seed=(seed, random_seed))
    run, data = run_and_data(run_dir)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(data.test[0]), generator=generator)[:examples]
    if len(chosen) < 2:
        raise UsageError(f"aevb diagnose needs at least 2 test examples (active units and the gaps' standard errors "
                         f"are over examples), and {'--examples is 1' if examples < 2 else 'the test set holds 1'}; "
                         "ask for more")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        result = diagnostics.diagnose(run.model, [t[chosen] for t in data.test], settings, num_samples,
                                      progress=progress)
    result = {"evidence": evaluation.evidence_name(data.test, data.standardization is not None), **result,
              **evaluation.standardized_entries(data.log_evidence_offset)}
    warnings = test_set_changed(run.config, data)
    result.update({"warnings": warnings} if warnings else {})
    figure = plotting.e_step_diagnostics(result, Path(run_dir) / "diagnostics.png")
    runs.write_json(Path(run_dir) / "diagnostics.json", result)  # last: its figure is there when it is
    return {**result, "figure": str(figure)}


def draw(model: LatentVariableModel, num_classes: int | None, num_samples: int, label: int | None = None,
         context: Sequence[Tensor] = ()) -> tuple[Tensor, list[str] | None]:
    """x ~ p(x), (N, ...), and no row labels; for a conditional model ``num_samples`` for ``label`` or for each
    class, one row per class, and the rows' labels; given a ``context`` other than labels (tensors of N' rows),
    x ~ p(x | c) for each of its rows, (N', ...)."""
    if label is not None and not num_classes:
        raise UsageError(f"--label is for conditional models; {model.name} is not one")
    if label is not None and not 0 <= label < num_classes:
        raise UsageError(f"--label {label} is not a class of this run: use 0 to {num_classes - 1}")
    with evaluation.eval_mode(model) as device:
        if context:
            return model.sample(len(context[0]), *(c.to(device) for c in context)), None
        if not num_classes:
            return model.sample(num_samples), None
        classes = [label] if label is not None else list(range(num_classes))
        labels = torch.tensor(classes, device=device).repeat_interleave(num_samples)
        return model.sample(len(labels), labels), [str(c) for c in classes]


def needs_context(model: LatentVariableModel) -> bool:
    """Whether ``model.sample`` has an argument after the number of samples that it cannot do without."""
    after = list(inspect.signature(model.sample).parameters.values())[1:]
    return any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in after)


def grey_range(x: Tensor) -> list[float]:
    """[low, high]: the grey scale of examples like ``x``, [0, 1] or wider where x is (counts of 0 to 16)."""
    return [min(0.0, x.min().item()), max(1.0, x.max().item())]


def plot_examples(x: Tensor, rows: list[str] | None, shape: Sequence[int], kind: str, path: Path, title: str,
                  reference: Tensor | None = None, value_range: Sequence[float] = (0.0, 1.0),
                  reference_labels: Tensor | None = None) -> None:
    """Examples as their kind shows best: images (and sequences of images, a step per row) as a grid, grey from
    ``value_range``'s low (black) to its high (white); other sequences (and 2-D examples far longer than wide, or
    wider than long) as series over time, and vectors as a heat map and pairwise scatter plots, each beside as many
    ``reference`` examples (the test data) when given, on the scale of the values shown (a grid of images shows the
    samples alone). Examples drawn class by class (``rows`` their classes) are shown by class, beside as many test
    examples of each class as ``reference_labels`` holds, up to as many as were drawn."""
    from aevb import plotting

    if kind == "vectors":
        per_class = len(x) // len(rows) if rows else len(x)
        sample_classes = None if not rows else torch.tensor([int(r) for r in rows]).repeat_interleave(per_class).numpy()
        shown = shown_classes = None
        if reference is not None and rows and reference_labels is not None:
            chosen = torch.cat([torch.nonzero(reference_labels.cpu() == int(r))[:per_class, 0] for r in rows])
            shown, shown_classes = reference.cpu()[chosen].numpy(), reference_labels.cpu()[chosen].numpy()
        elif reference is not None:
            shown = reference[:len(x)].cpu().numpy()
        plotting.vectors(x.cpu().numpy(), shown, path, title=title, sample_classes=sample_classes,
                         data_classes=shown_classes)
    elif not plotting.image_like(shape):  # sequences, or 2-D examples of a shape no image has
        x, labels = x.reshape(len(x), *shape), None
        shown, shown_labels = (None, None) if reference is None else (reference.cpu()[:plotting.SERIES_SHOWN], None)
        if rows:  # as many of each class as the panels hold, beside as many test sequences of the same classes
            per_class, each = len(x) // len(rows), max(1, plotting.SERIES_SHOWN // len(rows))
            chosen = [c * per_class + i for c in range(len(rows)) for i in range(min(each, per_class))]
            x, labels = x[chosen], [f"y = {rows[k // per_class]}" for k in chosen]
            if reference is not None and reference_labels is not None:
                of_class = torch.cat([torch.nonzero(reference_labels.cpu() == int(r))[:min(each, per_class), 0]
                                      for r in rows])
                shown, shown_labels = reference.cpu()[of_class], [f"y = {int(y)}" for y in reference_labels[of_class]]
        plotting.series(x.cpu().numpy(), path, title=title, labels=labels,
                        reference=None if shown is None else shown.reshape(len(shown), *shape).numpy(),
                        reference_labels=shown_labels)
    else:
        columns = len(x) // len(rows) if rows else GRID_COLUMNS
        plotting.image_grid(plotting.as_grid(x.flatten(1), shape, columns), path, rows, title=title,
                            value_range=value_range)


def standardized_unrecorded(run_dir: Path) -> bool:
    """Whether a run was fitted to standardized data by an aevb that did not record their mean and standard
    deviation in config.json (its summary has the offset, its config.json no standardization)."""
    summary = read_json(run_dir / "summary.json")
    return isinstance(summary, dict) and "log_evidence_offset" in summary


def sample_run(run_dir: str | Path, out: Path, num_samples: int, label: int | None = None, seed: int = 0,
               overwrite: bool = False) -> dict:
    """Draw from a run's model into ``out``: a figure (.png) or the arrays (.npy: x, (n, *the shape of one example);
    .npz: x and labels y), in the data's units where the model saw standardized data (x = m + s u, with the m and s
    its config.json records), written whole or not at all; an existing ``out`` (or a link there) is replaced only
    with ``overwrite``."""
    check_integers("sample_run", num_samples=(num_samples, sample_count), seed=(seed, random_seed))  # label: ``draw``
    run = load_run(run_dir)
    out = Path(out)
    if out.suffix not in SAMPLE_SUFFIXES:
        raise UsageError(f"--out {out}: use a {', '.join(SAMPLE_SUFFIXES)} file")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no folder {out.parent}; create it first")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name a file")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UsageError(f"--out {out} exists; name another file, or pass --overwrite to replace it")
    num_classes = run.config["data"]["num_classes"] if is_conditional(run.cls) else None
    if not num_classes and needs_context(run.model):
        raise UsageError(f"{run.cls.__name__}.sample needs a context, which aevb sample cannot give (it gives "
                         f"conditional models class labels, --label); draw from Python: "
                         f"aevb.fitting.load_run({str(run_dir)!r}).model.sample(n, c)")
    with torch.random.fork_rng():  # drawn from ``seed``; the caller's random state is left alone
        torch.manual_seed(seed)
        x, rows = draw(run.model, num_classes, num_samples, label)
    shape = run.config["data"]["shape"]
    if not isinstance(x, Tensor) or len(x) != num_samples * len(rows or [None]) or x[0].numel() != math.prod(shape):
        raise UsageError(f"{run.cls.__name__}.sample({num_samples}) gives {tuple(getattr(x, 'shape', ()))}, not "
                         f"({num_samples}, ...) of examples of shape {tuple(shape)}; fix its sample() "
                         "(aevb.testing.check_model checks it)")
    x, value_range, warnings = x.cpu(), run.config["data"]["range"], []
    standardization = run.config["data"].get("standardization")
    if standardization is not None:  # the model drew standardized u: x = m + s u, in the data's units
        mean, std = (torch.tensor(standardization[k], dtype=x.dtype) for k in ("mean", "std"))
        x = (x.flatten(1) * std + mean).reshape(x.shape)
        value_range = [(mean + std * value_range[0]).min().item(), (mean + std * value_range[1]).max().item()]
    elif standardized_unrecorded(Path(run_dir)):
        warnings.append(f"{run_dir} was fitted to standardized data by an aevb that did not record their mean and "
                        "standard deviation: these samples are of the standardized data u, not in the data's units")

    def write(path: Path) -> None:
        if out.suffix == ".png":
            plot_examples(x, rows, shape, run.config["data"]["kind"], path,
                          title=f"samples from {run_dir}", value_range=value_range)
            return
        import numpy as np

        arrays = {"x": x.reshape(len(x), *shape).numpy()}  # each of the data's shape
        if rows:
            arrays["y"] = np.repeat(np.array([int(r) for r in rows]), num_samples)
        np.save(path, arrays["x"]) if out.suffix == ".npy" else np.savez(path, **arrays)

    try:
        runs.write_atomically(out, write)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write in {out.parent} ({e.strerror}); choose another --out") from None
    return {"samples": len(x), "out": str(out), **({"warnings": warnings} if warnings else {})}
