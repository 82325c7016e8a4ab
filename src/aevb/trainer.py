"""Training as (approximate) EM: a schedule (``aevb.schedules``) says which parameter group each gradient step moves.

Each group has its own Adam optimizer and moment estimates. A step computes gradients only for the
groups its phase moves and steps only their optimizers, so the other group does not move at all:
during an E-phase theta, and with it the evidence, stays exactly where it was.

A trainer's ``state_dict`` is everything it needs to continue exactly where it stopped, inside an epoch
too: both optimizers, the step and epoch, the position in the epoch's batch order and the generator that
drew it, the global random state (draws of z, dropout, dynamic binarization) and the epoch's records so far.

Under torch.distributed (``torchrun``; ``aevb.distributed``) the batch size is the global batch: each rank
steps on its slice of every batch, and the ranks' gradients are summed before each step, so every rank takes
the same step, the one a single process takes on the whole batch (up to float summation order and the draws
of z). Seed each rank's global generator differently after building the model (its draws of z and dropout);
the batch-order generator is the trainer's own, seeded alike on every rank. A state_dict holds every rank's
random state (of its CPU, and of its GPU); resumed on another number of processes, each rank draws afresh from a
seed of the trainer's seed, the step and the rank.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import signal
import weakref
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from aevb import distributed
from aevb.errors import Diverged, Interrupted
from aevb.evaluation import eval_mode
from aevb.model import LatentVariableModel
from aevb.schedules import PHASE_GROUPS, PHASE_NAMES, Schedule

Transform = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]


def batch_sizes(examples: int, batch_size: int) -> list[int]:
    """The size of each of an epoch's batches: ``batch_size``, but for a last that holds what is left."""
    steps = math.ceil(examples / batch_size)
    return [batch_size] * (steps - 1) + [examples - (steps - 1) * batch_size]


class Batches:
    """Mini-batches of in-memory tensors, in an order drawn afresh for each epoch from ``generator``.

    Iterating gives one epoch; ``epoch(order, start)`` gives an epoch's batches from its ``start``-th on.
    ``transform``, if given, maps each batch afresh (e.g. ``aevb.data.dynamic_binarize``). Under torch.distributed,
    an error in reading or transforming this rank's rows of a batch is given in the batch's place.
    """

    def __init__(self, tensors: Sequence[Tensor], batch_size: int, generator: torch.Generator | int = 0,
                 transform: Transform | None = None) -> None:
        self.tensors, self.batch_size, self.transform = tuple(tensors), batch_size, transform
        self.generator = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator

    def __len__(self) -> int:
        return math.ceil(len(self.tensors[0]) / self.batch_size)

    def sizes(self) -> Tensor:
        """The (global) size of each of an epoch's batches, (len(self),) (``batch_sizes``)."""
        return torch.tensor(batch_sizes(len(self.tensors[0]), self.batch_size), dtype=torch.float32)

    def __iter__(self) -> Iterator[tuple[Tensor, ...] | Exception]:
        return self.epoch(self.order())

    def order(self) -> Tensor:
        """A new epoch's permutation of the examples (it advances the generator)."""
        return torch.randperm(len(self.tensors[0]), generator=self.generator)

    def epoch(self, order: Tensor, start: int = 0) -> Iterator[tuple[Tensor, ...] | Exception]:
        # The order moves to each tensor's device once per epoch: a CPU index into a GPU tensor would be
        # copied over at every batch, and that copy waits for the GPU (a host-device sync per step).
        # Under torch.distributed every rank draws the same order and takes its slice of each batch.
        # An error of this rank's alone in reading its rows (from disk) or transforming them is yielded in the
        # batch's place: the step agrees it with the other ranks, which would otherwise wait for this one.
        orders = [order.to(t.device).split(self.batch_size)[start:] for t in self.tensors]
        for indices in zip(*orders):
            try:
                batch = tuple(t[i[distributed.shard(len(i))]] for t, i in zip(self.tensors, indices))
                batch = self.transform(batch) if self.transform else batch
            except Exception as e:  # noqa: BLE001  (raised on every rank by the step)
                if not distributed.active():
                    raise
                batch = e
            yield batch


Evaluate = Callable[[LatentVariableModel], dict[str, Tensor]]
Callback = Callable[[list[dict]], None]
TERMS = ("log-likelihood", "KL", "ELBO")  # the terms a step checks for non-finite values, in this order


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Argument validation on or off in every distribution built inside, those that pass ``validate_args`` to an
    inner distribution included. Training turns it off (each check would wait for the GPU; data are validated
    once, at the boundary) but for a trainer's first step, which finds a model's bad parameters as torch would."""
    before = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(before)


def check_trainer_arguments(model: LatentVariableModel, lr, batch_size, estimator, clip_grad, lr_gamma) -> None:
    """``Trainer``'s arguments, each mistake a TypeError or ValueError naming it (not an error at the first step)."""
    number = lambda v, kind=numbers.Real: isinstance(v, kind) and not isinstance(v, bool)  # NumPy's scalars too
    for name, value, typed, valid, what in (
            ("lr", lr, number(lr), lambda: lr > 0, "a positive number"),
            ("batch_size", batch_size, number(batch_size, numbers.Integral), lambda: batch_size >= 1,
             "a positive integer"),
            ("lr_gamma", lr_gamma, number(lr_gamma), lambda: 0 < lr_gamma <= 1, "a number in (0, 1]"),
            ("clip_grad", clip_grad, clip_grad is None or number(clip_grad), lambda: clip_grad is None or clip_grad > 0,
             "None or a positive number (a gradient norm)")):
        if not (typed and valid()):
            raise (ValueError if typed else TypeError)(f"Trainer: {name} must be {what}, got {value!r}")
    if estimator is not None and estimator not in model.estimators:
        raise ValueError(f"Trainer: {type(model).__name__} has no estimator {estimator!r}; it has "
                         f"{', '.join(model.estimators) or 'none to choose'} (None: its default)")
    problem = model.parameter_group_problem()
    if problem:
        raise ValueError(f"Trainer: {problem}")


def data_identity(data: Sequence[Tensor]) -> list:
    """A weak reference to each tensor of data, with its version (which each in-place change through torch counts
    up, not one through ``.data`` or a numpy array sharing its memory): while these match, its contents are as they
    were, and data found finite once need not be scanned again. None for what has no version (an inference
    tensor, data that are not a tensor): scanned each time."""
    return [(weakref.ref(t), t._version) if isinstance(t, Tensor) and not t.is_inference() else None for t in data]


def same_data(data: Sequence[Tensor], identity: list) -> bool:
    """Whether ``data`` are the very tensors ``identity`` (``data_identity``) was taken of, unchanged since."""
    return len(data) == len(identity) and all(
        kept is not None and kept[0]() is t and kept[1] == t._version for t, kept in zip(data, identity))


def check_fit_arguments(data, epochs: int | None, steps: int | None, eval_every: str,
                        checkpoint_every: tuple[int, str]) -> None:
    """``Trainer.fit``'s arguments, each mistake a TypeError or ValueError naming it (not an error deep inside)."""
    if not isinstance(data, (tuple, list)) or not data:  # a bare tensor would be read as one row per tensor
        raise TypeError("Trainer.fit: data is a tuple of tensors (x, *context), e.g. (x_train,)")
    if len({len(t) for t in data}) > 1:
        raise ValueError(f"Trainer.fit: the tensors of data differ in length: {[len(t) for t in data]}")
    if not len(data[0]):
        raise ValueError("Trainer.fit: data hold no examples")
    if (epochs is None) == (steps is None):
        raise TypeError("Trainer.fit takes epochs or steps, one of them")
    if not (isinstance(epochs or steps, int) and (epochs or steps) >= 1):
        raise ValueError(f"Trainer.fit: {'epochs' if steps is None else 'steps'} must be a positive integer, "
                         f"got {epochs if steps is None else steps!r}")
    if eval_every not in ("epoch", "step"):
        raise ValueError(f"Trainer.fit: eval_every is 'epoch' or 'step', got {eval_every!r}")
    if not (isinstance(checkpoint_every, tuple) and len(checkpoint_every) == 2 and isinstance(checkpoint_every[0], int)
            and checkpoint_every[0] >= 1 and checkpoint_every[1] in ("epoch", "step")):
        raise ValueError(f"Trainer.fit: checkpoint_every is (N, 'epoch') or (N, 'step'), N >= 1, got {checkpoint_every!r}")


class Trainer:
    """Mini-batch gradient ascent on the mean ELBO, one Adam optimizer per parameter group.

    ``fit`` trains for more epochs or steps (call it again to train more) and returns its records: one per
    step (``eval_every='step'``) or per epoch, each with ``step``, ``epoch``, ``phase`` (the step's, or the
    epoch's: 'mixed' for one of E and M steps), the training ELBO and its terms (``train_elbo``,
    ``train_log_likelihood``, ``train_kl``: the step's, or the epoch's means over its examples) and
    whatever ``evaluate(model)`` returns. ``callbacks`` are called with each epoch's records (with the part
    of an epoch a call ends in too: the next call gives that epoch's again, whole, once it finishes it), and
    ``checkpoint(trainer)`` every ``checkpoint_every`` epochs or steps, after them.

    The trainer draws from the global random generator (seed it, e.g. with ``torch.manual_seed``) and orders
    the batches with its own generator, seeded by ``seed``. A non-finite ELBO, log-likelihood or KL, or a
    non-finite evaluated metric, stops training with ``aevb.errors.Diverged``; it is checked when records are
    made, so it costs no host-device synchronization in the steps between. ``clip_grad`` clips the gradient's
    norm. ``lr_milestones`` (epochs) and ``lr_gamma`` decay the learning rate: see ``learning_rate``.
    ``request_stop(signal)`` (e.g. from a signal handler) stops at the next step boundary with a
    checkpoint and ``aevb.errors.Interrupted``.

    ``torch_compile=True`` trains with the ELBO's forward and backward compiled by ``torch.compile`` (after
    one eager step). On a GPU, where small models spend their step launching kernels, it pays most; on a CPU it
    saves the step's Python and fuses its elementwise work (README, Benchmarks: VAE and CVAE steps 0.84 to 0.87 of
    eager's time after seconds of compiling; the GMVAE's were slower).
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
        clip_grad: float | None = None,
        lr_milestones: Sequence[int] = (),
        lr_gamma: float = 0.1,
    ) -> None:
        check_trainer_arguments(model, lr, batch_size, estimator, clip_grad, lr_gamma)
        self.model = model
        self.lr, self.lr_milestones, self.lr_gamma = lr, tuple(lr_milestones), lr_gamma
        self.schedule = Schedule.parse(schedule) if isinstance(schedule, str) else schedule
        self.batch_size, self.estimator, self.progress, self.clip_grad = batch_size, estimator, progress, clip_grad
        trained = {name: [p for p in params if p.requires_grad] for name, params in model.parameter_groups().items()}
        self.optimizers = {name: torch.optim.Adam(params, lr=lr, fused=True) for name, params in trained.items() if params}
        self.phase_parameters = {phase: [p for name in groups for p in trained[name]]
                                 for phase, groups in PHASE_GROUPS.items()}
        self.phase_optimizers = {phase: [self.optimizers[name] for name in groups if name in self.optimizers]
                                 for phase, groups in PHASE_GROUPS.items()}
        empty = [PHASE_NAMES[phase] for phase in self.schedule.phases() if not self.phase_parameters[phase]]
        if empty:
            raise ValueError(f"Trainer: the schedule {self.schedule} steps {' and '.join(empty)}, and "
                             f"{type(model).__name__} has no trainable parameters there")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)  # the batch order
        self.step_count = 0  # gradient steps taken
        self.epoch = 0  # the epoch in progress (1-based), or the last one finished
        self.position = 0  # batches of the current epoch taken; 0: the next step begins an epoch
        self.epoch_order_state = self.generator.get_state()  # the generator when this epoch's order was drawn
        self.pending: list[dict] = []  # this epoch's records, not yet handed to the callbacks
        # this epoch's training log-likelihoods, KLs and ELBOs, a row per step (rows :position taken so far), kept
        # in one tensor: thousands of small tensors, one per step, would scatter the heap between each step's buffers
        self.terms = torch.zeros(0, len(TERMS))
        self.stop_signal: int | None = None
        self.stop_agreed = False  # under torch.distributed: whether a rank was signalled, as of the last step's reduction
        self.finite_data: list = []  # data_identity of the data last found finite
        self.torch_compile = torch_compile
        self.sum_elbo = self._sum_elbo  # compiled after the first step, with ``torch_compile``

    def learning_rate(self, epoch: int) -> float:
        """Adam's step size in ``epoch`` (1-based): lr * gamma^(number of milestones before it), as torch's
        ``MultiStepLR`` stepped once per epoch gives; a function of the epoch alone, so a resumed run has it too."""
        return self.lr * self.lr_gamma ** sum(m < epoch for m in self.lr_milestones)

    def _sum_elbo(self, batch: Sequence[Tensor]) -> Tensor:
        """The batch's summed log-likelihood, KL, ELBO and the objective a step ascends (4,; ``ELBO.objective``,
        the ELBO unless the model says otherwise), by the trainer's estimator (None: the model's default)."""
        options = {} if self.estimator is None else {"estimator": self.estimator}
        terms = self.model.elbo(*batch, **options)
        objective = terms.elbo if terms.objective is None else terms.objective
        return torch.stack([terms.log_likelihood, terms.kl, terms.elbo, objective]).sum(-1)

    def step(self, batch: Sequence[Tensor] | Exception, phase: str) -> Tensor:
        """One gradient step on -mean ELBO (or on the model's ``ELBO.objective``, where it has one) over the (global)
        batch for the groups of ``phase``; returns the batch's mean log-likelihood, KL and ELBO (3,).

        Under torch.distributed, the gradient of -sum ELBO, the summed terms and the row count are summed over the
        ranks in one collective (``aevb.distributed``), then divided by the count: the mean over the global batch.
        An error on one rank alone (its rows, its GPU's memory; or the error that reading its rows raised, given in
        the batch's place by ``Batches``) is agreed in that collective: every rank raises (``distributed.agree``)."""
        optimizers, parameters = self.phase_optimizers[phase], self.phase_parameters[phase]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        several, failure = distributed.active(), batch if isinstance(batch, Exception) else None
        # torch.full launches a fill; torch.tensor would copy from the host and wait for the GPU at every step
        count = torch.full((), 0.0 if failure is not None else float(len(batch[0])), device=parameters[0].device)
        if failure is None and len(batch[0]):
            try:
                if self.torch_compile and self.sum_elbo == self._sum_elbo and self.step_count:  # resumed
                    self.compile(first=batch)
                sums = self.sum_elbo(batch)
                # gradients only for the groups this phase moves; one process: of the mean at once
                (-sums[3] if several else -sums[3] / count).backward(inputs=parameters)
                terms = sums[:len(TERMS)].detach().clone()  # a copy: a CUDA graph's next replay overwrites its output
            except BaseException as e:  # noqa: BLE001  (raised on every rank after the reduction below)
                if not several:
                    raise
                # an error of this rank's alone (a model's on its rows, the GPU's memory): the others would wait in
                # the reduction for this rank; it joins it instead, and every rank raises after it
                failure, terms = e, torch.zeros(len(TERMS), device=count.device)
        else:  # this rank's slice of a short last batch is empty, or could not be read
            terms = torch.zeros(len(TERMS), device=count.device)
        if several:
            used = torch.ones(len(parameters), device=count.device)  # by this rank: summed, by any
            for i, p in enumerate(parameters):  # unused by this rank's rows (or no rows): zero, so that every rank
                if p.grad is None:  # reduces alike
                    p.grad = torch.zeros_like(p)
                    used[i] = 0
            stop = torch.full((1,), float(self.stop_signal is not None), device=count.device)
            failed = torch.full((1,), float(failure is not None), device=count.device)
            distributed.all_reduce_sum([*(p.grad for p in parameters), terms, count, stop, failed, used])
            if failed.item():
                distributed.agree(failure)
            for p, by_some_rank in zip(parameters, used.tolist()):
                if not by_some_rank:  # unused by every rank: no gradient, so that Adam skips it as in one process
                    p.grad = None
            # every rank stops after this step if any was signalled before it; a signal that comes later travels
            # with the next step's reduction (``stopping``), so that no rank waits in a collective the others left
            self.stop_agreed = bool(stop.item())
            if self.stop_agreed and self.stop_signal is None:  # another rank was signalled
                self.stop_signal = signal.SIGTERM
            for p in parameters:
                if p.grad is not None:
                    p.grad.div_(count)
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.phase_parameters[phase], self.clip_grad, foreach=True)
        for optimizer in optimizers:
            optimizer.step()
        self.step_count += 1
        if self.torch_compile and self.sum_elbo == self._sum_elbo:
            self.compile()
        return terms / count

    def compile(self, first: Sequence[Tensor] | None = None) -> None:
        """The ELBO's forward (and so its backward) compiled by torch.compile, after an eager pass that memoizes the
        search in torch's KL registry, which torch.compile cannot trace: the first step's or, for a resumed fit,
        one on its ``first`` batch (in eval mode, without gradients, its draws forgotten), so that it is compiled
        from its first step on, as the interrupted fit was (compiled code rounds, and may draw, otherwise than
        eager code). On a GPU, "reduce-overhead" replays the forward and backward as CUDA graphs."""
        if first is not None:
            with torch.random.fork_rng(), eval_mode(self.model):
                self._sum_elbo(first)
        self.sum_elbo = torch.compile(self._sum_elbo, mode="reduce-overhead")

    def check_finite(self, records: list[dict]) -> None:
        """Raise ``Diverged`` for the epoch's first step with a non-finite term, or a non-finite number in ``records``.

        The steps' terms stay on the device until here (once per epoch): checking costs the steps no
        host-device synchronization."""
        if self.position:
            bad = ~torch.isfinite(self.terms[:self.position])  # (steps of the epoch so far, 3)
            rows = bad.any(1).nonzero()
            if len(rows):
                row = int(rows[0])
                term = TERMS[int(bad[row].int().argmax())]
                step = self.step_count - self.position + row + 1
                raise Diverged(step, self.epoch, f"the training ELBO's {term} term" if term != "ELBO" else "the training ELBO")
        for record in records:
            bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise Diverged(record["step"], record["epoch"], f"the evaluated {bad[0]}")

    def request_stop(self, signal: int) -> None:
        """Stop at the next step boundary: checkpoint, then raise ``Interrupted(signal)``."""
        self.stop_signal = signal

    def stopping(self) -> bool:
        """Whether to stop at this step boundary: a stop was requested or, under torch.distributed, one was on some
        rank before the last step's reduction (every rank answers alike)."""
        return self.stop_agreed if distributed.active() else self.stop_signal is not None

    def fit(
        self,
        data: Sequence[Tensor],
        epochs: int | None = None,
        steps: int | None = None,
        evaluate: Evaluate | None = None,
        eval_every: str = "epoch",
        callbacks: Sequence[Callback] = (),
        transform: Transform | None = None,
        checkpoint: Callable[["Trainer"], None] | None = None,
        checkpoint_every: tuple[int, str] = (1, "epoch"),
    ) -> list[dict]:
        """Train for ``epochs`` more passes over ``data`` (a tuple of tensors) or for ``steps`` more steps.

        ``transform`` maps every mini-batch before its step (see ``Batches``). ``checkpoint(self)`` is called
        every ``checkpoint_every = (n, 'epoch' or 'step')``, and when a stop is requested. A call that ends inside
        an epoch records it so far (the epoch record of its steps until then); the next call goes on with that
        epoch, in its order, so that ``fit(steps=5)`` twice trains as ``fit(steps=10)`` does, and ``epochs``
        counts that epoch's rest as the first.
        """
        check_fit_arguments(data, epochs, steps, eval_every, checkpoint_every)
        if not same_data(data, self.finite_data):  # scanned once, not by every call of a step-by-step loop
            if any(isinstance(t, Tensor) and t.is_floating_point() and not torch.isfinite(t).all() for t in data):
                raise ValueError("Trainer.fit: data contain NaN or infinite values; remove or impute them first")
            self.finite_data = data_identity(data)
        width = getattr(getattr(self.model, "config", None), "data_dim", None)  # one example's (one step's) size
        if isinstance(width, int) and isinstance(data[0], Tensor) and data[0].dim() >= 2 and data[0].shape[-1] != width:
            raise ValueError(f"Trainer.fit: {type(self.model).__name__} takes examples of {width} values "
                             f"(config.data_dim), and data[0] has shape {tuple(data[0].shape)}; flatten each example, "
                             "or build the model for these data")
        batches = Batches(data, self.batch_size, self.generator, transform)
        if self.position > len(batches):
            raise ValueError(f"Trainer.fit: the epoch in progress has taken {self.position} batches, and these data "
                             f"have {len(batches)}; pass the data it began with")
        # epochs: to the end of the epoch in progress (a call ended inside it), as the first, then whole ones
        total = self.step_count + (steps if steps is not None else epochs * len(batches) - self.position % len(batches))
        every, unit = checkpoint_every
        history: list[dict] = []
        self.model.train()
        with validation(False), tqdm(total=total - self.step_count, disable=not self.progress, unit="step",
                                     dynamic_ncols=True, leave=False) as bar:
            while self.step_count < total:
                if self.position == 0:  # a new epoch: draw its order
                    self.epoch, self.pending = self.epoch + 1, []
                    self.epoch_order_state = self.generator.get_state()
                else:  # inside an epoch (resumed, or a call ended in it): the same order again
                    self.generator.set_state(self.epoch_order_state)
                self.terms = self.epoch_terms(len(batches))
                for optimizer in self.optimizers.values():
                    optimizer.param_groups[0]["lr"] = self.learning_rate(self.epoch)
                for batch in batches.epoch(batches.order(), self.position):
                    phase = self.schedule.phase(self.step_count)
                    with validation(True) if self.step_count == 0 else contextlib.nullcontext():
                        self.terms[self.position] = self.step(batch, phase)
                    self.position += 1
                    if eval_every == "step":
                        self.pending.append(self._record(phase, self.terms[self.position - 1], evaluate))
                    bar.update()
                    if self.step_count >= total or self.stopping():
                        break
                    if checkpoint and unit == "step" and self.step_count % every == 0:
                        checkpoint(self)
                if self.stopping() and self.step_count < total:
                    if checkpoint:
                        checkpoint(self)
                    raise Interrupted(self.stop_signal, self.step_count)
                if eval_every != "step":
                    phase = self.schedule.phase_of(self.step_count - self.position, self.step_count)
                    sizes = batches.sizes()[:self.position].to(self.terms)  # a mean over the epoch's examples
                    mean = (self.terms[:self.position] * sizes[:, None]).sum(0) / sizes.sum()
                    self.pending.append(self._record(phase, mean, evaluate))
                records = [{k: v.item() if isinstance(v, Tensor) else v for k, v in r.items()} for r in self.pending]
                records = distributed.broadcast(records)  # rank 0's: every rank logs and judges the same numbers
                self.check_finite(records)
                self.pending = []
                if self.position == len(batches):  # else this call ended inside the epoch: the next goes on with it
                    self.position = 0
                history.extend(records)
                bar.set_postfix({k: f"{v:.3f}" for k, v in records[-1].items() if isinstance(v, float)})
                for callback in callbacks:
                    callback(records)
                if checkpoint and (unit == "epoch" and self.epoch % every == 0 or self.step_count >= total):
                    checkpoint(self)
        return history

    def epoch_terms(self, steps: int) -> Tensor:
        """Room for the terms of an epoch of ``steps`` steps, on the model's device, with the rows of the steps
        taken so far (those of an epoch resumed from a checkpoint)."""
        parameter = next(self.model.parameters())
        terms = torch.empty(steps, len(TERMS), device=parameter.device, dtype=parameter.dtype)
        terms[:self.position] = self.terms[:self.position]
        return terms

    def _record(self, phase: str, terms: Tensor, evaluate: Evaluate | None) -> dict:
        """The record of a step or epoch: its training ELBO and terms (means) and the evaluated metrics."""
        record = {"step": self.step_count, "epoch": self.epoch, "phase": phase, "train_elbo": terms[2],
                  "train_log_likelihood": terms[0], "train_kl": terms[1]}
        if evaluate is not None:  # its draws from a fork of the random state: monitoring leaves the fit as it is
            self.model.eval()
            with torch.inference_mode(), torch.random.fork_rng():
                metrics = evaluate(self.model)
            self.model.train()
            if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) or isinstance(v, Tensor)
                                                        and v.numel() == 1 for v in metrics.values()):
                raise TypeError(f"Trainer.fit: evaluate(model) must return a dict of numbers (or one-element "
                                f"tensors), got {metrics!r:.200}")
            record.update(metrics)
        return record

    def state_dict(self) -> dict:
        """Everything ``load_state_dict`` needs to continue exactly from here (tensors, numbers, lists, dicts)."""
        return {
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
            "step": self.step_count, "epoch": self.epoch, "position": self.position,
            "generator": self.generator.get_state(), "epoch_order_state": self.epoch_order_state,
            "pending": [{k: v.item() if isinstance(v, Tensor) else v for k, v in r.items()} for r in self.pending],
            "terms": self.terms[:self.position].cpu(),
            "rng": distributed.all_gather(torch.get_rng_state()),  # every rank's (draws of z, dropout, ...)
            # each rank's GPU's (its current device's); in one process, every device's
            "cuda_rng": ((distributed.all_gather(torch.cuda.get_rng_state()) if distributed.active()
                          else torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.step_count, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])
        self.generator.set_state(state["generator"])
        self.epoch_order_state = state["epoch_order_state"]
        self.pending = list(state["pending"])
        device = next(self.model.parameters()).device
        self.terms = state["terms"].to(device)
        if self.terms.shape != (self.position, len(TERMS)):
            raise ValueError(f"terms of shape {tuple(self.terms.shape)} for {self.position} steps of the epoch")
        if not isinstance(state["rng"], list):
            raise TypeError("rng is not a list of the ranks' random states")
        rank = distributed.rank()
        if len(state["rng"]) == distributed.world_size():
            torch.set_rng_state(state["rng"][rank])
            if state["cuda_rng"] and torch.cuda.is_available():
                if distributed.active():
                    torch.cuda.set_rng_state(state["cuda_rng"][rank])
                else:
                    torch.cuda.set_rng_state_all(state["cuda_rng"])
        else:  # resumed on another number of processes: fresh draws for each rank (CPU and GPUs), from a seed of
            # its own (SeedSequence: unlike a sum, it is no other rank's seed at any step)
            torch.manual_seed(int(np.random.SeedSequence([self.seed, self.step_count, rank]).generate_state(1)[0]))
