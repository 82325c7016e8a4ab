"""How many CPU threads to train with: one, unless a training step holds a great deal of arithmetic.

Split over two threads, every operation of a step pays a fork and a barrier, and on a machine busy with
other work the second thread is often not running when the first waits for it: the barrier waits for the
scheduler. A small VAE (2000 x 50) trained in 41.1 s with torch's default of two threads and in 3.7 s with
one, to the same ELBOs. ``default_threads`` measures the work of one step, the floating-point operations of
one forward and backward of the model's ELBO on the batch (``step_flops``: 2 per multiply-add of the
matrix products, convolutions and recurrent layers), and gives the machine's threads only above
``THRESHOLD_FLOPS``; the ``--threads`` flag overrides it.

The rule and its numbers (``benchmarks/threads.py``: 1 thread against 2, alternated in one process, median
time per step of aevb's ``Trainer``; this project's machine, a 2-core AMD EPYC virtual machine, torch 2.13
CPU build with OpenMP, busy with other work: load average 1.5 to 3.7 during the runs). t2/t1, the time per
step with two threads over that with one, over 4 runs of the grid and 4 of larger VAEs:

* below 1 GFLOP per step (VAEs of hidden widths 32 to 500, batches 32 to 500, D = 50 or 784; FA): two
  threads were slower in 66 of 68 measurements, by a median 7 times and up to 85 times (at load 2 to 3,
  with a core or more taken); the two wins were 0.65 and 0.91;
* 1.7 to 11 GFLOP (VAE D=50 or 784, h=500, B=500; the GMVAE at its defaults, 6.8; VAE h=1000 B=500):
  slower in all 13, 2.5 to 11 times (geometric mean 5.4);
* 22 and 33 GFLOP (VAE h=1000 B=1000; the VRNN at its defaults, its 33 GFLOP in some 5000 small operations):
  slower in 6 of 7 (3.4, 2.5, 3.2; VRNN 5.9, 4.1, 0.68, 12.9);
* 68 GFLOP (VAE h=2000 B=1000, 1.3 s a step with one thread): 1.87, 0.65, 1.79 (geometric mean 1.3);
* 231 GFLOP (VAE h=4000 B=1000, 4 s a step with one thread): 0.62, 1.24, 1.30 (geometric mean 1.0).

So the penalty shrinks as the work grows, and the geometric mean of t2/t1 reaches 1 only at about 200 GFLOP,
the threshold: below it the loss when the machine is busy (several times, at worst tens of times)
outweighs the gain when it is not (at best about 1.6 times); above it the two are of a size. Every built-in
model at its default sizes (VAE and CVAE 0.8, GMVAE 6.8, VRNN 33 GFLOP at batch 100) trains with one
thread. On a larger or quiet machine more threads pay for smaller steps: pass ``--threads`` there.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

THRESHOLD_FLOPS = 200e9  # FLOPs of one ELBO forward and backward above which a second thread pays
SAMPLE_ROWS = 4  # the examples the ELBO is run on; the count is scaled linearly to the batch

THREADS_HELP = (f"CPU threads for torch (default: {torch.get_num_threads()}, torch's default, when one ELBO "
                f"forward and backward on a batch costs over {THRESHOLD_FLOPS / 1e9:g} GFLOP, else 1: "
                "below that a second thread was slower on a busy machine)")


def _parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _fallback_flops(model: nn.Module, batch: Sequence[Tensor]) -> float:
    """6 x (weights in matrices) x (positions in the batch): forward and backward through every weight matrix
    once per example, or once per position of a sequence (B, T, D). For models whose ELBO cannot be measured."""
    try:
        x = batch[0]
        positions = math.prod(x.shape[:-1]) if x.dim() > 1 else len(x)
        weights = sum(p.numel() for p in _parameters(model) if p.dim() >= 2)
        return 6.0 * weights * positions
    except Exception:  # not even that: no work known, one thread
        return 0.0


class _Enough(BaseException):
    """Raised inside the count once it passes ``stop_at``: the rest of the forward need not run. A
    ``BaseException``, so that a model's own ``except Exception`` does not swallow it."""


def _contraction(args: tuple, out: Tensor, operand: int = 0) -> float:
    """2 x (output elements) x (length of the contracted dimension): a matrix product of any batch shape."""
    return 2.0 * out.numel() * args[operand].shape[-1]


def _convolution(args: tuple, out: Tensor, transposed: bool) -> float:
    """2 x (elements of the larger side) x (one output channel's weights, or one input channel's)."""
    x, weight = args[0], args[1]
    return 2.0 * (x if transposed else out).numel() * weight[0].numel()


def _recurrent_cell(args: tuple, out) -> float:
    """lstm_cell(input, hx, w_ih, w_hh, ...) and the GRU and RNN cells: 2 x rows x (w_ih and w_hh)."""
    rows = math.prod(args[0].shape[:-1])
    return 2.0 * rows * (args[2].numel() + args[3].numel())


def _recurrent(args: tuple, out) -> float:
    """A whole (multi-layer, maybe bidirectional) LSTM, GRU or RNN: every weight matrix once per position."""
    positions = math.prod(args[0].shape[:-1])
    weights = [t for arg in args if isinstance(arg, (list, tuple))
               for t in arg if isinstance(t, Tensor) and t.dim() == 2]
    return 2.0 * positions * sum(w.numel() for w in weights)


# torch functions (by name, so aliases such as torch.matmul, Tensor.matmul and ``@`` all count) -> the FLOPs
# of one call's forward, from its arguments and output.
_FORWARD_FLOPS = {
    **{name: lambda args, out: _contraction(args, out)
       for name in ("linear", "matmul", "__matmul__", "mm", "bmm")},
    "__rmatmul__": lambda args, out: _contraction(args, out, 1),
    **{name: lambda args, out: _contraction(args, out, 1) for name in ("addmm", "baddbmm")},
    "bilinear": lambda args, out: 2.0 * out.numel() * args[0].shape[-1] * args[1].shape[-1],
    **{f"conv{d}d": lambda args, out: _convolution(args, out, False) for d in (1, 2, 3)},
    **{f"conv_transpose{d}d": lambda args, out: _convolution(args, out, True) for d in (1, 2, 3)},
    "scaled_dot_product_attention": lambda args, out: (
        2.0 * math.prod(args[0].shape[:-1]) * args[1].shape[-2] * (args[0].shape[-1] + out.shape[-1])),
    **{name: _recurrent_cell for name in ("lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell")},
    **{name: _recurrent for name in ("lstm", "gru", "rnn_tanh", "rnn_relu")},
}
BACKWARD_FACTOR = 3  # forward + backward = 3 x forward: each product's backward is two products of its size


class _FlopCount(TorchFunctionMode):
    """Adds up the forward FLOPs of the matrix products, convolutions, attention and recurrent layers called
    inside it (2 per multiply-add; elementwise work is not counted), times ``scale``.

    A ``TorchFunctionMode`` rather than torch's ``FlopCounterMode``: that one is a dispatch mode, whose first
    use imports ``torch._dynamo`` (seconds on a busy machine), and its per-module bookkeeping and
    decompositions cost more than the step itself for a model of many small operations (a VRNN).
    """

    def __init__(self, scale: float, stop_at: float | None) -> None:
        super().__init__()
        self.flops, self.scale, self.stop_at = 0.0, scale, stop_at

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = _FORWARD_FLOPS.get(getattr(func, "__name__", None))
        if formula is not None:
            try:
                self.flops += formula(args, out) * self.scale
            except Exception:  # an unexpected signature (e.g. keyword arguments): not counted
                pass
            if self.stop_at is not None and self.flops >= self.stop_at:
                raise _Enough
        return out


def step_flops(model: nn.Module, batch: Sequence[Tensor], estimator: str | None = None,
               rows: int = SAMPLE_ROWS, stop_at: float | None = None) -> float:
    """FLOPs of one training step's forward and backward of the ELBO of ``model`` on ``batch`` (x, *context).

    ``BACKWARD_FACTOR`` x the forward FLOPs of the ELBO's matrix products, convolutions, attention and
    recurrent layers (2 per multiply-add; elementwise work is not counted), counted on the first ``rows``
    examples with one thread and scaled linearly to the batch (costs that grow faster with the batch size
    would be underestimated). With ``stop_at``, counting stops as soon as the count (times the factor)
    reaches that many FLOPs, and returns it: enough to compare, at a fraction of the cost.

    The draws happen inside ``torch.random.fork_rng``, so the caller's random state is as it was; nothing
    is differentiated, so no ``.grad`` changes, and the buffers (e.g. batch-norm statistics) are restored.
    If the ELBO cannot be run this way (an exception: an unusual model or batch), the estimate
    ``6 x (weights in matrices) x (positions in the batch)`` stands in.
    """
    try:
        size = len(batch[0])
        taken = min(size, rows)
        sample = tuple(t[:taken] for t in batch)
    except Exception:  # not a batch of tensors
        return _fallback_flops(model, batch)
    if size == 0:
        return 0.0
    options = {} if estimator is None else {"estimator": estimator}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    count = _FlopCount(BACKWARD_FACTOR * size / taken, stop_at)
    try:  # a few examples: one thread is fastest, and a busy machine cannot slow it
        with torch_threads(1), torch.random.fork_rng(devices=[]), torch.enable_grad(), count:
            model.elbo(*sample, **options)
        return count.flops
    except _Enough:
        return count.flops
    except Exception:  # an unusual model or batch: estimate from the weights instead
        return _fallback_flops(model, batch)
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def default_threads(model: nn.Module, batch: Sequence[Tensor], estimator: str | None = None) -> int:
    """The number of CPU threads to train ``model`` on batches like ``batch`` with.

    1 when one forward and backward of the ELBO on ``batch`` costs under ``THRESHOLD_FLOPS`` (see
    ``step_flops`` and the module's docstring for the measurements behind it), otherwise
    ``torch.get_num_threads()`` (torch's default, the machine's cores, unless changed). A model on a GPU
    gets ``torch.get_num_threads()`` unmeasured: its CPU threads hardly work. It costs a forward of the
    ELBO on 4 examples (milliseconds; less for large models, whose count stops at the threshold), and
    leaves the random state, the parameters, their gradients and the buffers as they were.
    """
    available = torch.get_num_threads()
    if available <= 1:
        return 1
    tensor = next(iter(model.parameters()), None)
    if tensor is None and batch and isinstance(batch[0], Tensor):
        tensor = batch[0]
    if tensor is not None and tensor.device.type != "cpu":
        return available
    return 1 if step_flops(model, batch, estimator, stop_at=THRESHOLD_FLOPS) < THRESHOLD_FLOPS else available


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``count`` inside (None: left as they are); the caller's count restored after."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
