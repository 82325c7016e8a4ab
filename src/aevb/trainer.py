"""Training as (approximate) EM: a schedule says which parameter group each gradient step moves.

* ``joint``: AEVB, phi and theta together every step;
* ``e-step``: phi only, the approximate E-step (variational inference; the evidence cannot move);
* ``m-step``: theta only, the approximate M-step;
* ``alternate:E,M``: E steps on phi, then M steps on theta, repeated.

Each group has its own Adam optimizer and moment estimates. A step computes gradients only for the
groups its phase moves and steps only their optimizers, so the other group does not move at all:
during an E-phase theta, and with it the evidence, stays exactly where it was.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from aevb.model import LatentVariableModel

PHASE_GROUPS = {"joint": ("inference", "generative"), "e": ("inference",), "m": ("generative",)}
SCHEDULE_HELP = "joint, e-step, m-step or alternate:E,M (E steps on phi, then M steps on theta)"


@dataclass(frozen=True)
class Schedule:
    """Which phase ('joint', 'e' or 'm') gradient step ``step`` (0-based) belongs to."""

    e_steps: int = 0
    m_steps: int = 0
    only: str | None = "joint"

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        fixed = {"joint": "joint", "e-step": "e", "m-step": "m"}
        if text in fixed:
            return cls(only=fixed[text])
        match = re.fullmatch(r"alternate:(\d+),(\d+)", text)
        if not match or int(match[1]) == 0 or int(match[2]) == 0:
            raise ValueError(f"bad schedule {text!r}: use {SCHEDULE_HELP}, e.g. alternate:1000,1000")
        return cls(int(match[1]), int(match[2]), only=None)

    def __str__(self) -> str:
        names = {"joint": "joint", "e": "e-step", "m": "m-step"}
        return names[self.only] if self.only else f"alternate:{self.e_steps},{self.m_steps}"

    def phase(self, step: int) -> str:
        if self.only:
            return self.only
        return "e" if step % (self.e_steps + self.m_steps) < self.e_steps else "m"

    def phase_spans(self, total_steps: int) -> list[tuple[str, int, int]]:
        """[(phase, first_step, last_step + 1)], consecutive steps of one phase merged."""
        spans: list[tuple[str, int, int]] = []
        for step in range(total_steps):
            phase = self.phase(step)
            if spans and spans[-1][0] == phase:
                spans[-1] = (phase, spans[-1][1], step + 1)
            else:
                spans.append((phase, step, step + 1))
        return spans


Transform = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]


class Batches:
    """Mini-batches of in-memory tensors, reshuffled each epoch from a seeded generator.

    ``transform``, if given, maps each batch afresh (e.g. ``aevb.data.dynamic_binarize``).
    """

    def __init__(
        self, tensors: Sequence[Tensor], batch_size: int, seed: int = 0, transform: Transform | None = None
    ) -> None:
        self.tensors, self.batch_size, self.transform = tuple(tensors), batch_size, transform
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.tensors[0]) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order = torch.randperm(len(self.tensors[0]), generator=self.generator)
        # The order moves to each tensor's device once per epoch: a CPU index into a GPU tensor would be
        # copied over at every batch, and that copy waits for the GPU (a host-device sync per step).
        orders = [order.to(t.device).split(self.batch_size) for t in self.tensors]
        for indices in zip(*orders):
            batch = tuple(t[i] for t, i in zip(self.tensors, indices))
            yield self.transform(batch) if self.transform else batch


Evaluate = Callable[[LatentVariableModel], dict[str, Tensor]]


class Trainer:
    """Mini-batch gradient ascent on the mean ELBO, one Adam optimizer per parameter group.

    ``fit`` returns the history: one record per step (``eval_every='step'``) or per epoch, each with
    ``step``, ``epoch``, ``phase``, the training ELBO (the step's, or the epoch's mean) and whatever
    ``evaluate(model)`` returns. ``callbacks`` are called with each finished epoch's records.

    ``torch_compile=True`` trains with the ELBO's forward and backward compiled by ``torch.compile`` (after
    one eager step). It is meant for a GPU, where small models spend their step launching kernels; on a CPU
    the step is bound by arithmetic, and compiling (seconds to a minute) gains little or nothing.
    """

    def __init__(
        self,
        model: LatentVariableModel,
        schedule: str | Schedule = "joint",
        lr: float = 1e-3,
        batch_size: int = 100,
        estimator: str | None = None,
        seed: int = 0,
        progress: bool = True,
        torch_compile: bool = False,
    ) -> None:
        self.model = model
        self.schedule = Schedule.parse(schedule) if isinstance(schedule, str) else schedule
        self.batch_size, self.estimator, self.seed, self.progress = batch_size, estimator, seed, progress
        self.optimizers = {
            name: torch.optim.Adam(params, lr=lr, fused=True) for name, params in model.parameter_groups().items()
        }
        self.phase_parameters = {
            phase: [p for name in groups for p in self.optimizers[name].param_groups[0]["params"]]
            for phase, groups in PHASE_GROUPS.items()
        }
        self.step_count = 0
        self.torch_compile = torch_compile
        self.mean_elbo = self._mean_elbo  # compiled after the first step, with ``torch_compile``

    def _mean_elbo(self, batch: Sequence[Tensor]) -> Tensor:
        """The batch's mean ELBO, 0-dim, by the trainer's estimator (None: the model's default)."""
        options = {} if self.estimator is None else {"estimator": self.estimator}
        return self.model.elbo(*batch, **options).elbo.mean()

    def step(self, batch: Sequence[Tensor], phase: str) -> Tensor:
        """One gradient step on -mean ELBO for the groups of ``phase``; returns the batch's mean ELBO."""
        groups = PHASE_GROUPS[phase]
        elbo = self.mean_elbo(batch)
        for name in groups:
            self.optimizers[name].zero_grad(set_to_none=True)
        (-elbo).backward(inputs=self.phase_parameters[phase])  # gradients only for the groups this phase moves
        for name in groups:
            self.optimizers[name].step()
        self.step_count += 1
        if self.torch_compile and self.mean_elbo == self._mean_elbo:
            # Compiled only now: torch.compile cannot trace the search in torch's KL registry, which the eager
            # step has just memoized. On a GPU, "reduce-overhead" replays the forward and backward as CUDA graphs.
            self.mean_elbo = torch.compile(self._mean_elbo, mode="reduce-overhead")
        return elbo.detach().clone()  # a copy: a CUDA graph's next replay overwrites its output in place

    def fit(
        self,
        data: Sequence[Tensor],
        epochs: int | None = None,
        steps: int | None = None,
        evaluate: Evaluate | None = None,
        eval_every: str = "epoch",
        callbacks: Sequence[Callable[[list[dict]], None]] = (),
        transform: Transform | None = None,
    ) -> list[dict]:
        """Train for ``epochs`` passes over ``data`` (a tuple of tensors) or for ``steps`` steps.

        ``transform`` maps every mini-batch before its step (see ``Batches``).
        """
        torch.manual_seed(self.seed)
        batches = Batches(data, self.batch_size, self.seed, transform)
        total = steps if steps is not None else epochs * len(batches)
        history: list[dict] = []
        self.model.train()
        with tqdm(total=total, disable=not self.progress, unit="step", dynamic_ncols=True, leave=False) as bar:
            epoch = 0
            while self.step_count < total:
                epoch += 1
                records, elbos = [], []
                for batch in batches:
                    if self.step_count >= total:
                        break
                    phase = self.schedule.phase(self.step_count)
                    elbos.append(self.step(batch, phase))
                    if eval_every == "step":
                        records.append(self._record(epoch, phase, elbos[-1], evaluate))
                    bar.update()
                if eval_every != "step":
                    records.append(self._record(epoch, phase, torch.stack(elbos).mean(), evaluate))
                records = [{k: v.item() if isinstance(v, Tensor) else v for k, v in r.items()} for r in records]
                history.extend(records)
                bar.set_postfix({k: f"{v:.3f}" for k, v in records[-1].items() if isinstance(v, float)})
                for callback in callbacks:
                    callback(records)
        return history

    def _record(self, epoch: int, phase: str, train_elbo: Tensor, evaluate: Evaluate | None) -> dict:
        record = {"step": self.step_count, "epoch": epoch, "phase": phase, "train_elbo": train_elbo}
        if evaluate is not None:
            self.model.eval()
            with torch.inference_mode():
                record.update(evaluate(self.model))
            self.model.train()
        return record
