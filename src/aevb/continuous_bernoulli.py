"""The continuous Bernoulli distribution on [0, 1] (Loaiza-Ganem & Cunningham 2019), exact in float32.

    p(x | l) = C(l) exp(-BCE(l, x)) = C(l) lambda^x (1 - lambda)^(1 - x),    lambda = sigmoid(l),

with the normalizer C(l) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda). Since 1 - 2 sigmoid(l) = -tanh(l / 2) and
artanh(tanh(a)) = a, this is C(l) = l / tanh(l / 2), even in l, so

    log C(l) = log |l| - log tanh(|l| / 2)                         (|l| >= SMALL)
             = log |l| - log(-expm1(-|l|)) + log1p(exp(-|l|))     (tanh a = (1 - e^-2a) / (1 + e^-2a))
             = log 2 + l^2 / 12 - 7 l^4 / 1440 + O(l^6)          (|l| < SMALL: the two logs above cancel)

Every term is finite and accurate in float32 for any finite logit: log C grows like log |l| and its gradient
is 1/l - 1/sinh(l), never zero. torch's ``ContinuousBernoulli`` computes C from lambda clamped to
[eps, 1 - eps] (float32 eps = 1.19e-7), so beyond |l| ~ 15.9 (logit(1 - eps)) its log C is stuck at 2.769 (off by
-3.45 nats at l = 500), with zero gradient beyond 16.6: a decoder that needs a pixel's lambda near 0 or 1 cannot get
there.

In the natural parameterization, p(x | l) = exp(l x) / Z(l) with Z(l) = expm1(l) / l = exp(softplus(l)) / C(l).
``log_prob`` computes l x - log Z(l), with a = |l|,

    log Z(l) = max(l, 0) + log(-expm1(-a) / a)
             = max(l, 0) - a/2 + a^2/24 - a^4/2880 + O(a^6)        (a < SMALL, under torch.compile)

finite and accurate to float32 rounding of its terms for any finite l (a is floored at 1e-30, where the ratio is
1), and the derivative d log Z / dl = E[x] written by hand (``LogPartition``): about a third of the time of
-BCE + log C through autograd. Compiled, the series replaces the log near 0: torch.compile's CPU code computes
expm1(x) as exp(x) - 1, which is 0 for |x| < 6e-8 (log Z = -inf there, and a fit diverges) and off by 1 % at
1e-6 (pytorch/pytorch#189803). Eager, expm1 is exact and the series would only cost time. The mean
(d log Z / dl) and the inverse CDF that ``rsample`` uses: see ``mean`` and ``icdf``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all, lazy_property

SMALL = 0.1  # below it, the Taylor series: the first terms left out (31 l^6 / 90720 in log C, a^6 / 181440 in
# log Z) are under 4e-10 there
TINY = 1e-30  # the floor of |l| in log Z: -expm1(-a) / a is 1 to float32 precision there
UNIFORM = 1e-6  # below it, a draw is u + l u (1 - u) / 2: the O(l^2) left out is under 1e-13


def log_normalizer(logits: Tensor) -> Tensor:
    """log C(l) elementwise: log |l| - log tanh(|l| / 2), or its Taylor series near 0 (module docstring)."""
    a = logits.abs()
    small = a < SMALL
    # each branch gets inputs it is finite at, so the branch not taken passes no NaN to the gradient
    large, near_zero = torch.where(small, SMALL, a), torch.where(small, logits, 0.0)
    exact = large.log() - torch.log(-torch.expm1(-large)) + torch.log1p(torch.exp(-large))
    square = near_zero * near_zero
    taylor = math.log(2.0) + square / 12 - 7 * square * square / 1440
    return torch.where(small, taylor, exact)


class LogPartition(torch.autograd.Function):
    """log Z(l) = max(l, 0) + log(-expm1(-a) / a), a = |l| (compiled: its series -a/2 + a^2/24 - a^4/2880 in place
    of the log for a < SMALL; module docstring), elementwise; its backward multiplies by dlog Z / dl = E[x] =
    -1 / expm1(-l) - 1 / l, or 1/2 + l/12 - l^3/720 for |l| < SMALL, where the two terms cancel. No autograd runs
    through these formulas, so the lanes that ``where`` does not take may hold infinities or NaN
    (``ContinuousBernoulli.mean``, which autograd does run through, keeps every lane finite instead).

    The forward takes ``ctx`` itself rather than a separate ``setup_context``: with one, every ``apply`` binds its
    arguments through ``inspect.signature``: 119 us a call against 46 on this project's CPU (torch 2.13)."""

    @staticmethod
    def forward(ctx, logits: Tensor) -> Tensor:
        ctx.save_for_backward(logits)
        a = logits.abs().clamp_min(TINY)
        log_ratio = torch.log(-torch.expm1(-a) / a)
        if torch.compiler.is_compiling():  # compiled CPU code computes expm1 as exp - 1: the series near 0 instead
            log_ratio = torch.where(a < SMALL, a * (a * (1 / 24 - a * a / 2880) - 0.5), log_ratio)
        return F.relu(logits) + log_ratio

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (logits,) = ctx.saved_tensors
        exact = -1 / torch.expm1(-logits) - 1 / logits
        taylor = 0.5 + logits / 12 - logits**3 / 720
        return grad * torch.where(logits.abs() < SMALL, taylor, exact)


class ContinuousBernoulli(Distribution):
    """Continuous Bernoulli with logits l (any real; lambda = sigmoid(l) is ``probs``), exact for every float32 l.

    ``log_prob(x)`` = -BCE(l, x) + log C(l), elementwise: shape broadcast(batch, x). ``mean``, ``sample``
    and ``rsample`` (the reparameterized inverse-CDF draw) as in torch's distribution of the same name.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, logits: Tensor, validate_args: bool | None = None) -> None:
        (self.logits,) = broadcast_all(logits)
        super().__init__(self.logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ContinuousBernoulli, _instance)
        new.logits = self.logits.expand(batch_shape)
        super(ContinuousBernoulli, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @lazy_property
    def probs(self) -> Tensor:
        """lambda = sigmoid(l): the parameter the tutorial's figures draw (not the mean)."""
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        """E[x] = d log Z / dl = 1 / (1 - e^-l) - 1/l: with a = |l|, -1/expm1(-a) - 1/a for l > 0 and
        exp(-a)/expm1(-a) + 1/a for l < 0 (neither overflows, and a mean near 0 keeps its digits);
        1/2 + l/12 - l^3/720 near 0, where the two terms cancel."""
        small = self.logits.abs() < SMALL
        a, near_zero = torch.where(small, SMALL, self.logits.abs()), torch.where(small, self.logits, 0.0)
        exact = torch.where(self.logits < 0, torch.exp(-a) / torch.expm1(-a) + 1 / a, -1 / torch.expm1(-a) - 1 / a)
        taylor = 0.5 + near_zero / 12 - near_zero ** 3 / 720
        return torch.where(small, taylor, exact)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        return logits * value - LogPartition.apply(logits)  # = -BCE(l, x) + log C(l)

    def icdf(self, u: Tensor) -> Tensor:
        """The x with CDF u: log1p(u expm1(l)) / l for l < 0, and by the symmetry x(l, u) = 1 - x(-l, 1 - u) for
        l > 0 (so exp never overflows); u + l u (1 - u) / 2 for |l| < UNIFORM, near the uniform distribution."""
        negative = self.logits < 0
        a = self.logits.abs()
        near_uniform = a < UNIFORM
        large, near_zero = torch.where(near_uniform, 1.0, a), torch.where(near_uniform, self.logits, 0.0)
        v = torch.where(negative, u, 1 - u)
        x = torch.log1p(v * torch.expm1(-large)) / -large  # the draw for logit -|l| and uniform v
        x = torch.where(negative, x, 1 - x)
        return torch.where(near_uniform, u + near_zero * u * (1 - u) / 2, x)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        return self.icdf(torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device))
