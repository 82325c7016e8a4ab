"""``check_model``: hold any latent variable model, the user's own included, to the contract of :mod:`aevb.model`.

Like scikit-learn's ``check_estimator``. ``check_model(model, batch)`` checks, in this order, with B the batch size,
x = batch[0] and context = batch[1:]:

1. config: ``type(model).Config`` is a dataclass, ``model.config`` an instance of it, and
   ``Config(**json.loads(json.dumps(asdict(config))))`` rebuilds an equal config.
2. parameter groups: ``parameter_groups()`` has exactly 'generative' and 'inference', disjoint in their trainable
   parameters, and together they hold every trainable parameter of the model (a frozen one may be anywhere);
   every parameter is finite.
3. elbo terms: for a model with ``factors``, it returns three things, q(z|x) and p(x|z) have batch shape (B,) and
   p(z) () or (B,) (each distribution's coordinates in its event: ``Independent``); ``elbo(*batch)`` has the terms
   elbo, log_likelihood and kl, each finite and of shape (B,), and elbo = log_likelihood - kl.
4. kl: kl >= 0 (to 1e-5): the default estimator's KL (analytic in every built-in model) is a divergence (skipped
   where the KL is sampled: a model whose default estimator, the first of ``estimators``, is ``sgvb``, and a pair
   from ``factors`` that torch.distributions has no KL for).
5. gradients: -elbo.mean() sends a finite, non-zero gradient to every trainable parameter of both groups.
6. reparameterization: log_likelihood.mean() alone sends a non-zero gradient to some inference (phi) parameter,
   as it does when z is drawn with ``rsample()`` (skipped when q has no trainable parameters).
7. isolation: two ``Trainer`` steps with schedule 'e-step' leave the generative module's state (parameters and
   buffers) bit for bit as it was, and two with 'm-step' the inference module's.
8. importance weights: ``log_importance_weights(*batch, num_samples=K)`` is finite, of shape (K, B).
9. iwae: in eval mode, over 200 draws, a single log-weight (the one-sample bound) has the ELBO's mean (within 5
   standard errors) and the mean ``iwae_bound(num_samples=K)`` (the model's own, which may be tighter) is not
   below the mean ELBO (within 5 standard errors).
10. sample: ``sample(B, *context)`` is finite, of shape (B, *x.shape[1:]).
11. encode: ``encode(*batch)`` is a finite tensor of shape (B, L).
12. checkpoint: ``checkpoint()``'s state_dict holds tensors only; through ``torch.save`` and
    ``torch.load(weights_only=True)``, its config through JSON, ``from_checkpoint`` rebuilds an equal config, the
    same dtypes and, from the same seed in eval mode, bit for bit the same ELBO.
13. determinism: the same seed gives the same ELBO twice.

``checks`` runs some of them, in this order: ``aevb fit`` runs ``BEFORE_FIT`` on a few training examples before
it trains, the checks that hold for every model whatever its batch and settings (the gradients check can fail on
a batch that leaves a component unused, isolation on running statistics, determinism on a GPU's nondeterministic
kernels, and the config and checkpoint checks on a tuple field that the fit path reads back either way) and whose
failure would otherwise be a traceback or a wrong number after training.

Every check runs on deep copies of the model, with its draws seeded from ``seed`` inside ``torch.random.fork_rng``:
the caller's model (parameters, buffers, gradients, mode) and global random state are left as they were. An error
the model raises is reported as the failure of the check it broke. Pass a small batch (a few to a few tens of
examples): the IWAE check evaluates 200 copies of it. In a test::

    def test_my_model_keeps_the_contract():
        check_model(MyModel(MyModel.Config(data_dim=4)), torch.rand(8, 4))
"""
from __future__ import annotations

import copy
import io
import json
import math
from dataclasses import asdict, is_dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.distributions import kl_divergence

from aevb.model import PARAMETER_GROUPS, LatentVariableModel
from aevb.trainer import Trainer

__all__ = ["BEFORE_FIT", "CHECKS", "ModelCheckError", "check_model"]
TERMS = ("elbo", "log_likelihood", "kl")
DRAWS = 200  # draws of the one-sample bounds whose means the IWAE check compares
STANDARD_ERRORS = 5  # how far apart two estimates of one mean may lie before the IWAE check fails
RELATIVE_TOLERANCE = 1e-4  # of the mean ELBO's magnitude, for float rounding in the IWAE check


class ModelCheckError(AssertionError):
    """A model breaks the contract: ``check`` names the broken property; the message says what was found and what
    is expected."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


class Broken(Exception):
    """Raised inside a check; ``check_model`` reraises it as a ModelCheckError naming the check."""


class Case(NamedTuple):
    model: LatentVariableModel  # a deep copy of the caller's
    batch: tuple[Tensor, ...]
    num_samples: int
    seed: int

    @property
    def size(self) -> int:
        return len(self.batch[0])


def check_model(model: LatentVariableModel, batch: Tensor | Sequence[Tensor], num_samples: int = 20,
                seed: int = 0, checks: Sequence[str] | None = None) -> dict[str, str]:
    """Check ``model`` against the contract on ``batch`` = (x, *context) (or x); raise ModelCheckError at the first
    broken property. ``checks``: names of ``CHECKS`` to run (default all). Returns {property: 'passed' or
    'skipped: why'}, in the order checked."""
    if not isinstance(model, LatentVariableModel):
        raise TypeError(f"check_model takes an aevb.model.LatentVariableModel, got {type(model).__name__}")
    unknown = sorted(set(checks or ()) - set(CHECKS))
    if unknown:
        raise ValueError(f"check_model: no check named {', '.join(map(repr, unknown))}; the checks are {', '.join(CHECKS)}")
    batch = (batch,) if isinstance(batch, Tensor) else tuple(batch)
    report = {}
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda_devices), torch.enable_grad():
        case = Case(copy.deepcopy(model), batch, num_samples, seed)
        for name, check in CHECKS.items():
            if checks is not None and name not in checks:
                continue
            try:
                report[name] = check(case) or "passed"
            except Broken as broken:
                raise ModelCheckError(name, str(broken)) from None
            except Exception as error:  # the model's own error, named after the check it broke
                raise ModelCheckError(name, f"{type(error).__name__}: {error}") from error
    return report


def found(value) -> str:
    return f"has shape {tuple(value.shape)}" if isinstance(value, Tensor) else f"is a {type(value).__name__}"


def seeded_elbo(model: LatentVariableModel, case: Case, train: bool = True):
    """The model's ELBO terms on the case's batch, drawn from the case's seed, in train or eval mode."""
    model.train(train)
    torch.manual_seed(case.seed)
    return model.elbo(*case.batch)


def trainable(case: Case) -> dict[str, dict[str, torch.nn.Parameter]]:
    """{group: {parameter name: parameter}} for the parameters that require a gradient."""
    names = {id(p): n for n, p in case.model.named_parameters()}
    return {group: {names[id(p)]: p for p in params if p.requires_grad}
            for group, params in case.model.parameter_groups().items()}


def nonzero_gradients(output: Tensor, params: dict[str, torch.nn.Parameter]) -> dict[str, bool]:
    """{name: whether d output / d parameter is non-zero}; Broken if a gradient is not finite."""
    grads = torch.autograd.grad(output, list(params.values()), allow_unused=True) if output.requires_grad \
        else [None] * len(params)
    nonfinite = [name for name, g in zip(params, grads) if g is not None and not torch.isfinite(g).all()]
    if nonfinite:
        raise Broken(f"the gradient of {', '.join(nonfinite)} is not finite; expected finite gradients")
    return {name: g is not None and bool(g.abs().sum() > 0) for name, g in zip(params, grads)}


def check_config(case: Case) -> None:
    config_class, config = getattr(type(case.model), "Config", None), getattr(case.model, "config", None)
    if not (isinstance(config_class, type) and is_dataclass(config_class)):
        raise Broken(f"{type(case.model).__name__}.Config is {config_class!r}; expected a dataclass of hyperparameters")
    if not isinstance(config, config_class):
        raise Broken(f"model.config is a {type(config).__name__}; expected a {config_class.__name__}")
    try:
        text = json.dumps(asdict(config))
    except (TypeError, ValueError) as error:
        raise Broken(f"asdict(config) is not JSON ({error}); expected fields of JSON types") from None
    rebuilt = config_class(**json.loads(text))
    if rebuilt != config:
        raise Broken(f"through JSON, {config!r} comes back as {rebuilt!r}; expected an equal config (JSON turns a "
                     "tuple into a list: convert it back in __post_init__)")


def check_parameter_groups(case: Case) -> None:
    groups = case.model.parameter_groups()
    if sorted(groups) != sorted(PARAMETER_GROUPS):
        raise Broken(f"parameter_groups() has {sorted(groups)}; expected exactly {sorted(PARAMETER_GROUPS)}")
    problem = case.model.parameter_group_problem()
    if problem:
        raise Broken(problem)
    not_finite = [name for name, p in case.model.named_parameters() if not torch.isfinite(p).all()]
    if not_finite:
        raise Broken(f"{', '.join(not_finite[:3])} {'holds' if len(not_finite) == 1 else 'hold'} NaN or infinite "
                     "values; expected finite parameters (look at how they are initialized)")


def factors(case: Case) -> tuple | None:
    """``factors`` on the case's batch: (q(z|x), p(z), p(x|z) as a function of z), or None for a model with an ELBO
    of its own."""
    try:
        found = case.model.factors(*case.batch)
    except NotImplementedError:
        return None
    if not (isinstance(found, (tuple, list)) and len(found) == 3):
        returned = f"{len(found)} things" if isinstance(found, (tuple, list)) else f"a {type(found).__name__}"
        raise Broken(f"factors() returned {returned}; expected three things: (q(z|x), p(z), a function z -> p(x|z))")
    return found


def check_factor_shapes(case: Case) -> None:
    """From ``factors``: q(z|x) and p(x|z) one distribution per example (batch (B,)), p(z) one or one per example."""
    found = factors(case)
    if found is None:
        return
    q_z, p_z, p_x_given_z = found
    with torch.no_grad():
        for name, d, shapes in (("q(z|x)", q_z, [(case.size,)]), ("p(z)", p_z, [(), (case.size,)]),
                                ("p(x|z)", p_x_given_z(q_z.sample()), [(case.size,)])):
            if tuple(d.batch_shape) not in shapes:
                raise Broken(f"factors' {name} has batch shape {tuple(d.batch_shape)} and event shape "
                             f"{tuple(d.event_shape)}; expected batch shape {' or '.join(map(str, shapes))}: wrap a "
                             "distribution over each coordinate in Independent(..., 1), so that log_prob gives one "
                             "number per example")


def check_elbo_terms(case: Case) -> None:
    check_factor_shapes(case)
    out, shape = seeded_elbo(case.model, case), (case.size,)
    for term in TERMS:
        value = getattr(out, term, None)
        if not isinstance(value, Tensor) or value.shape != shape:
            raise Broken(f"the term {term} {found(value)}; expected a tensor of shape {shape}, one value per example")
        if not torch.isfinite(value).all():
            raise Broken(f"the term {term} is not finite for {int((~torch.isfinite(value)).sum())} of {case.size} "
                         "examples; expected finite values")
    if not torch.allclose(out.elbo, out.log_likelihood - out.kl, rtol=1e-5, atol=1e-5):
        gap = (out.elbo - (out.log_likelihood - out.kl)).abs().max().item()
        raise Broken(f"elbo differs from log_likelihood - kl by up to {gap:.3g}; expected elbo = log_likelihood - kl")


def check_kl(case: Case) -> str | None:
    if case.model.estimators[:1] == ("sgvb",):
        return "skipped: the default estimator, sgvb, samples the KL"
    found = factors(case)
    if found is not None:
        q_z, p_z, _ = found
        try:
            kl_divergence(q_z, p_z)
        except NotImplementedError as e:  # the default estimator samples it: a draw's KL may be negative
            return f"skipped: the KL is sampled, as torch.distributions has none for this pair ({e})"
    kl = seeded_elbo(case.model, case).kl
    if (kl < -1e-5).any():
        raise Broken(f"kl is negative for {int((kl < -1e-5).sum())} of {case.size} examples (down to "
                     f"{kl.min().item():.4g}); expected KL(q || p) >= 0 from the default estimator, an analytic KL "
                     "(a model whose default estimator samples the KL names it first in estimators, as 'sgvb')")


def check_gradients(case: Case) -> str | None:
    groups = trainable(case)
    params = {name: p for group in groups.values() for name, p in group.items()}
    if not params:
        return "skipped: the model has no trainable parameters"
    reached = nonzero_gradients(-seeded_elbo(case.model, case).elbo.mean(), params)
    missing = [name for name, reaches in reached.items() if not reaches]
    if missing:
        raise Broken(f"no gradient of -elbo.mean() reaches {', '.join(missing)}; expected a non-zero gradient to "
                     "every parameter of both groups (each must take part in the ELBO)")


def check_reparameterization(case: Case) -> str | None:
    phi = trainable(case)["inference"]
    if not phi:
        return "skipped: q has no trainable parameters"
    if not any(nonzero_gradients(seeded_elbo(case.model, case).log_likelihood.mean(), phi).values()):
        raise Broken("the log-likelihood term does not reach any inference (phi) parameter through the draw of z; "
                     "draw z with rsample(), not sample()")


def check_isolation(case: Case) -> str | None:
    if not all(case.model.parameter_groups().values()):
        return "skipped: the trainer needs parameters in both groups"
    for schedule, fixed in (("e-step", "generative"), ("m-step", "inference")):
        model = copy.deepcopy(case.model)
        before = {k: v.clone() for k, v in getattr(model, fixed).state_dict().items()}
        Trainer(model, schedule, lr=1e-2, batch_size=case.size, seed=case.seed, progress=False).fit(case.batch, steps=2)
        after = getattr(model, fixed).state_dict()
        changed = sorted(k for k in before.keys() | after.keys()
                         if k not in before or k not in after or not torch.equal(before[k], after[k]))
        if changed:
            raise Broken(f"two steps with schedule '{schedule}' changed model.{fixed}'s {', '.join(changed)}; "
                         "expected its parameters and buffers bit for bit unchanged (a buffer the forward pass "
                         "updates, like BatchNorm's running statistics, moves outside its group's step)")


def check_importance_weights(case: Case) -> None:
    k, b = case.num_samples, case.size
    with torch.no_grad():
        log_weights = case.model.eval().log_importance_weights(*case.batch, num_samples=k)
    if not isinstance(log_weights, Tensor) or log_weights.shape != (k, b):
        raise Broken(f"log_importance_weights(num_samples={k}) {found(log_weights)}; expected shape {(k, b)}, "
                     "one log-weight per draw (first) and example")
    if not torch.isfinite(log_weights).all():
        raise Broken(f"log_importance_weights(num_samples={k}) has {int((~torch.isfinite(log_weights)).sum())} "
                     "non-finite values; expected finite values")


def check_iwae(case: Case) -> None:
    model, k, b = case.model.eval(), case.num_samples, case.size
    with torch.no_grad():
        elbo = draws(lambda batch: model.elbo(*batch).elbo, case, DRAWS)  # (DRAWS, B), as are the next
        one = draws(lambda batch: model.log_importance_weights(*batch, num_samples=1)[0], case, DRAWS)
        many = draws(lambda batch: model.iwae_bound(*batch, num_samples=k), case, max(2, DRAWS // k))
    tolerance = RELATIVE_TOLERANCE * (1 + elbo.mean().abs().item())
    gap = one - elbo  # zero-mean for each example if a log-weight is the ELBO in expectation
    standard_error = gap.std().item() / math.sqrt(gap.numel())
    if abs(gap.mean().item()) > STANDARD_ERRORS * standard_error + tolerance:
        raise Broken(f"over {DRAWS} draws log_importance_weights(num_samples=1) averages {one.mean().item():.6g} and the ELBO "
                     f"{elbo.mean().item():.6g} ({gap.mean().item() / standard_error:+.1f} standard errors); expected "
                     "equal means: log_importance_weights must be log p(x, z) - log q(z | x), z ~ q, for the "
                     "ELBO's p and q")
    gain = (many.mean(0) - elbo.mean(0)).mean().item()  # per example, then over examples
    standard_error = math.sqrt((many.var(0) / len(many) + elbo.var(0) / len(elbo)).sum().item()) / b
    if gain < -(STANDARD_ERRORS * standard_error + tolerance):
        raise Broken(f"iwae_bound(num_samples={k}) averages {-gain:.4g} below the ELBO ({gain / standard_error:.1f} "
                     "standard errors); expected it not below: the bound rises with the number of samples")


def draws(bound: Callable[[tuple[Tensor, ...]], Tensor], case: Case, repeats: int) -> Tensor:
    """``repeats`` independent draws of a per-example bound, from one pass over the batch repeated; (repeats, B)."""
    torch.manual_seed(case.seed)
    repeated = tuple(t.repeat(repeats, *[1] * (t.dim() - 1)) for t in case.batch)  # (repeats * B, ...)
    values = bound(repeated)
    if not isinstance(values, Tensor) or values.shape != (len(repeated[0]),):
        raise Broken(f"a bound on {len(repeated[0])} examples {found(values)}; expected ({len(repeated[0])},)")
    return values.double().view(repeats, case.size)


def check_sample(case: Case) -> None:
    x, context, model = case.batch[0], case.batch[1:], case.model.eval()
    torch.manual_seed(case.seed)
    with torch.no_grad():
        samples = model.sample(case.size, *context)
    expected = (case.size, *x.shape[1:])
    if not isinstance(samples, Tensor) or samples.shape != expected:
        args = f"{case.size}{', *context' if context else ''}"
        raise Broken(f"sample({args}) {found(samples)}; expected shape {expected}, a batch of x")
    if not torch.isfinite(samples).all():
        raise Broken("sample() drew non-finite values; expected finite values")


def check_encode(case: Case) -> None:
    model = case.model.eval()
    with torch.no_grad():
        code = model.encode(*case.batch)
    if not isinstance(code, Tensor) or code.dim() != 2 or len(code) != case.size:
        raise Broken(f"encode(*batch) {found(code)}; expected shape ({case.size}, L), a code of L numbers per example")
    if not torch.isfinite(code).all():
        raise Broken("encode(*batch) has non-finite values; expected finite codes")


def check_checkpoint(case: Case) -> None:
    model, checkpoint = case.model, case.model.checkpoint()
    not_tensors = [k for k, v in checkpoint["state_dict"].items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise Broken(f"the state_dict's {', '.join(not_tensors)} are not tensors; expected tensors only, which "
                     "torch.load(weights_only=True) reads")
    buffer = io.BytesIO()
    torch.save({**checkpoint, "config": json.loads(json.dumps(checkpoint["config"]))}, buffer)
    buffer.seek(0)
    clone = type(model).from_checkpoint(torch.load(buffer, weights_only=True)).to(case.batch[0].device)
    if clone.config != model.config:
        raise Broken(f"from_checkpoint rebuilds the config {clone.config!r}; expected {model.config!r}")
    state = model.state_dict()
    for key, value in clone.state_dict().items():
        if value.dtype != state[key].dtype:
            raise Broken(f"from_checkpoint rebuilds {key} as {value.dtype}; expected the model's {state[key].dtype}")
    with torch.no_grad():
        original, rebuilt = seeded_elbo(model, case, train=False), seeded_elbo(clone, case, train=False)
    differs = [term for term in TERMS if not torch.equal(getattr(original, term), getattr(rebuilt, term))]
    if differs:
        raise Broken(f"from the same seed in eval mode the rebuilt model's {', '.join(differs)} differ from the "
                     "original's; expected bit-identical values (state kept outside the state_dict and config?)")


def check_determinism(case: Case) -> None:
    with torch.no_grad():
        first, second = seeded_elbo(case.model, case, train=False), seeded_elbo(case.model, case, train=False)
    if not torch.equal(first.elbo, second.elbo):
        raise Broken("the same seed gave two different ELBOs; expected the same (draw only from torch's global "
                     "generator, and change no state in elbo())")


CHECKS: dict[str, Callable[[Case], str | None]] = {
    "config": check_config,
    "parameter groups": check_parameter_groups,
    "elbo terms": check_elbo_terms,
    "kl": check_kl,
    "gradients": check_gradients,
    "reparameterization": check_reparameterization,
    "isolation": check_isolation,
    "importance weights": check_importance_weights,
    "iwae": check_iwae,
    "sample": check_sample,
    "encode": check_encode,
    "checkpoint": check_checkpoint,
    "determinism": check_determinism,
}
BEFORE_FIT = ("parameter groups", "elbo terms", "reparameterization", "importance weights", "sample", "encode")
