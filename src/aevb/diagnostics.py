"""Diagnostics of the E-step: how loose a fitted model's bound is, and why (``aevb diagnose``).

For an example x and theta fixed, with q_phi(z|x) the amortized posterior and q*(z|x) the best member of its
family for this x alone (Cremer, Li & Duvenaud 2018, *Inference Suboptimality in Variational Autoencoders*):

    log p(x) - ELBO[q_phi] = (log p(x) - ELBO[q*])  +  (ELBO[q*] - ELBO[q_phi])
                           =  approximation gap     +  amortization gap.

* q* comes from local E-steps, the non-amortized E-step: gradient ascent on ELBO(x; q) over q's own parameters,
  started at q_phi(z|x), with theta fixed. The parameters are those of q's ``torch.distributions`` objects,
  optimized unconstrained through ``transform_to`` of their constraints (a scale through exp, a Cholesky factor
  through its exp-diagonal). Adam is elementwise and each example's ELBO involves only its own parameters, so a
  batch of examples is optimized at once without any example's steps depending on the others'. The learning
  rate decays to 0 (cosine), so the last steps average out the Monte Carlo noise of the S-sample gradients.
* Started at a q_phi that is already near the optimum, noisy steps can end below their start (Adam moves each
  parameter by about the learning rate whatever the gradient's size). So for each example q* is the last
  iterate only where an estimate of its ELBO (``eval_samples`` draws) beats q_phi's, else q_phi itself: the
  local E-step never lowers an example's bound beyond that estimate's noise. Nor does it reach the optimum:
  what it leaves counts in the approximation gap, not the amortization gap, and the standard errors (over
  examples) do not cover it; more steps shrink it.
* ELBO[q_phi] and ELBO[q*] are then estimated afresh with the same random numbers (``eval_samples`` draws per
  example, common to both), so the amortization gap's noise is that of the difference, and 0 where q* = q_phi.
  That holds for samplers that turn a fixed count of standard draws into z (location-scale families and their
  transforms); torch's Gamma sampler (behind Beta, Dirichlet and Student t) rejects a number of draws that depends
  on the parameters, so for those families the two estimates are not coupled.
* log p(x) is exact where the model has ``log_evidence`` (factor analysis), else the K-sample IWAE bound with
  q* as proposal: q_phi can be so much narrower or further off than p(z|x) that its IWAE bound stays below
  ELBO[q*] even at K = 1000 (a VAE on MNIST, 11 nats below). The bound is below log p(x), so the approximation
  gap it gives is a lower bound too.
* Posterior collapse: KL(q(z|x) || p(z)) per latent dimension (for a factorized q and p), the active units of
  Burda et al. (2016) (dimension d is active when Cov_x(E_q[z_d | x]) > 0.01), and I_q(x; z), the mutual
  information under q(x, z) = p_data(x) q(z|x), estimated as in Hoffman & Johnson (2016):
  I = E_x E_q(z|x) [log q(z|x) - log q(z)], with the aggregate q(z) = (1/N) sum_n q(z | x_n) over the N
  examples (so the estimate is at most log N).

What a model needs: ``e_step_problem`` (derived from ``factors``; the GMVAE defines its own, with q(y|x) and
q(z|x,y) for every y as the local parameters). A model without one (the VRNN: its q(z_t | h_t, x_t) reads the
sampled z_<t through h_t, so no set of per-example parameters describes a member of its family) gets log p(x),
ELBO[q_phi] and their gap, and its active units.
"""
from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from dataclasses import asdict
from typing import Callable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, kl_divergence, transform_to
from tqdm.auto import tqdm

from aevb.arguments import LocalEStep
from aevb.elbo import kl_term
from aevb.evaluation import eval_mode, in_batches
from aevb.model import EStepProblem, LatentVariableModel
from aevb.trainer import validation

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016)
T = TypeVar("T")


@contextmanager
def theta_fixed(model: LatentVariableModel, build: Callable[[], T]) -> Iterator[T]:
    """Eval mode (dropout off) and gradients on: ``build()``, while the parameters are tracked as they are (so
    that what depends on none of them shows as a constant: ``free_parameters``), then no parameter of the model
    tracked; restored after. Yields what ``build`` returned."""
    was_training, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval()
    try:
        with torch.enable_grad():
            built = build()
            model.requires_grad_(False)
            yield built
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


class NoLocalParameters(NotImplementedError):
    """q's family has no parameters that ``free_parameters`` can find: its local E-step is not covered."""


ALTERNATIVES = {"logits": ("probs",), "scale_tril": ("covariance_matrix", "precision_matrix")}  # preferred: others


def free_parameters(q: Distribution) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor]], Distribution]]:
    """q's per-example parameters in unconstrained space, as new leaf tensors, and the map from such values to the
    member of q's family they define (``Independent`` wrappers kept). The parameters are those of q's
    ``arg_constraints`` that q was built from: stored on it, or read through a property (LogNormal's loc and scale
    live on its base Normal); of alternative ones, logits rather than probabilities and scale_tril rather than a
    covariance (which a MultivariateNormal may have computed). A constant, a parameter that depends on no trainable
    parameter of the model (it does not require grad where ``refine`` builds q) and is broadcast over the examples
    (stride 0 along the first dimension: a Student t's fixed degrees of freedom), belongs to the family, and is
    held where q_phi has it; one the encoder computes, even the same for every x, is an example's own to
    optimize. NoLocalParameters where there is nothing to free, q is not built from its parameters alone, or they
    constrain one another (a Uniform's low < high: moving each within a bound set by the other's start would
    freeze the interval's ends)."""
    if isinstance(q, Independent):
        free, build = free_parameters(q.base_dist)
        return free, lambda u: Independent(build(u), q.reinterpreted_batch_ndims, validate_args=False)
    constraints = q.arg_constraints
    names = [name for name in constraints
             if name in vars(q) or isinstance(inspect.getattr_static(q, name, None), property)]
    for preferred, others in ALTERNATIVES.items():
        names = [name for name in names if name not in others] if preferred in names else names
    if not names:
        raise NoLocalParameters(f"{type(q).__name__} has no parameters (arg_constraints) that aevb can optimize "
                                "per example")
    try:  # e.g. RelaxedOneHotCategorical needs its temperature too, which is not a parameter
        type(q)(**{name: getattr(q, name) for name in names}, validate_args=False)
    except TypeError as e:
        raise NoLocalParameters(f"{type(q).__name__} is not built from its parameters ({', '.join(names)}) alone "
                                f"({e})") from None
    values = {name: getattr(q, name) for name in names}
    held = {name: value for name, value in values.items()
            if not value.requires_grad and value.dim() and value.stride(0) == 0}
    if len(held) == len(names):
        raise NoLocalParameters(f"every parameter of {type(q).__name__} ({', '.join(names)}) is a constant of its "
                                "family: none is an example's own to optimize")
    coupled = [name for name in names if any(isinstance(v, Tensor) for v in vars(constraints[name]).values())]
    if coupled:
        raise NoLocalParameters(f"the constraints of {type(q).__name__}'s {' and '.join(coupled)} depend on its other "
                                "parameters, which aevb cannot move unconstrained")
    free = {name: transform_to(constraints[name]).inv(value.detach()).clone().requires_grad_()
            for name, value in values.items() if name not in held}
    return free, lambda u: type(q)(**{name: transform_to(constraints[name])(u[name]) for name in free}, **held,
                                   validate_args=False)


def estimate(elbo: Callable[[dict[str, Distribution], int], Tensor], q: dict[str, Distribution],
             num_samples: int, chunk: int = 10) -> Tensor:
    """ELBO(x; q) averaged over ``num_samples`` draws, ``chunk`` at a time (bounded memory); shape (B,)."""
    with torch.no_grad():
        sizes = [min(chunk, num_samples - start) for start in range(0, num_samples, chunk)]
        return sum(elbo(q, size) * size for size in sizes) / num_samples


def local_e_step(problem: EStepProblem, settings: LocalEStep) -> tuple[dict[str, Distribution], Tensor, Tensor]:
    """q*: ``settings.steps`` Adam steps of ascent on sum_x ELBO(x; q) from q_phi, each example then keeping its
    last iterate or q_phi, whichever an ``eval_samples``-draw estimate of its ELBO puts higher; the mean ELBO
    estimate before each step, shape (steps,), over the examples where it is finite (an example whose steps left
    its prior's support, say, drops out, and keeps q_phi); and which examples kept q_phi, (B,) bool."""
    free, build = {}, {}
    for name, q in problem.q.items():
        free[name], build[name] = free_parameters(q)
    start = {name: {k: u.detach().clone() for k, u in values.items()} for name, values in free.items()}
    leaves = [u for values in free.values() for u in values.values()]
    optimizer = torch.optim.Adam(leaves, lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(settings.steps, 1))
    curve = []
    for _ in range(settings.steps):
        elbo = problem.elbo({name: build[name](free[name]) for name in free}, settings.samples)  # (B,)
        for leaf, grad in zip(leaves, torch.autograd.grad(-elbo.sum(), leaves)):
            leaf.grad = grad
        optimizer.step()
        schedule.step()
        curve.append(torch.where(torch.isfinite(elbo), elbo, math.nan).detach().nanmean())
    with torch.no_grad():
        last = {name: build[name](free[name]) for name in free}
        last_elbo, start_elbo = same_draws(problem.elbo, (last, problem.q), settings.eval_samples)
        better = last_elbo > start_elbo  # (B,)
        for name, q in problem.q.items():
            if any(u.shape[:1] != better.shape for u in free[name].values()):
                raise ValueError(f"e_step_problem: q[{name!r}] has batch shape {tuple(q.batch_shape)}; every factor's "
                                 f"must have the examples first, (B, ...) with B = {len(better)}")
        kept = {name: {k: torch.where(better.view(-1, *[1] * (u.dim() - 1)), u, start[name][k])
                       for k, u in values.items()} for name, values in free.items()}
        q_star = {name: build[name](kept[name]) for name in kept}
    return q_star, torch.stack(curve) if curve else torch.empty(0), ~better


def same_draws(elbo: Callable[[dict[str, Distribution], int], Tensor], qs: Sequence[dict[str, Distribution]],
               num_samples: int) -> list[Tensor]:
    """``estimate`` for each q of ``qs``, all from the same random numbers (common random numbers: the noise of
    their differences is far below that of each, and 0 between equal qs); the generators' states move on once."""
    seed, estimates = int(torch.randint(2**62, ())), []
    for q in qs:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            estimates.append(estimate(elbo, q, num_samples))
    return estimates


def not_covered(model: LatentVariableModel, batch: Sequence[Tensor]) -> str | None:
    """Why the local E-steps do not cover ``model``, a phrase, or None where they do: it defines no
    ``e_step_problem``, or a factor of its q on ``batch`` (x, *context), on the model's device, has no parameters
    that ``free_parameters`` can free. The random number generators are left as they were."""
    try:
        with torch.random.fork_rng(), theta_fixed(model, lambda: model.e_step_problem(*batch)) as problem:
            for q in problem.q.values():
                free_parameters(q)
    except NoLocalParameters as e:
        return str(e)
    except NotImplementedError:
        return f"{model.name} defines no e_step_problem (see aevb.diagnostics)"
    return None


def refine(model: LatentVariableModel, batch: Sequence[Tensor], settings: LocalEStep,
           iwae_samples: int = 0) -> dict[str, Tensor]:
    """Local E-steps on one batch (x, *context) on the model's device, theta fixed: per example (B,) the ELBO of
    q_phi and of q* ("elbo_amortized", "elbo_optimal"), with ``iwae_samples`` the IWAE bound with q* as proposal
    ("iwae"), whether the example kept q_phi ("q_phi_kept", 1.0 or 0.0), and the steps' mean curve ("curve",
    (steps,)). NotImplementedError for a model without ``e_step_problem``."""
    with theta_fixed(model, lambda: model.e_step_problem(*batch)) as problem:
        q_star, curve, kept = local_e_step(problem, settings)
        amortized, optimal = same_draws(problem.elbo, (problem.q, q_star), settings.eval_samples)
        result = {"elbo_amortized": amortized, "elbo_optimal": optimal, "q_phi_kept": kept.double(), "curve": curve}
        if iwae_samples:
            with torch.no_grad():
                result["iwae"] = problem.iwae_bound(q_star, iwae_samples)
    return result


def mean_and_se(values: Tensor) -> tuple[float, float | None]:
    """The mean over examples and its standard error (None for one example)."""
    values = values.double()
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else None


def active_units(codes: Tensor) -> int:
    """Dimensions d with Cov_x(E_q[z_d | x]) > 0.01, for codes (N, L)."""
    return int((codes.double().var(0) > ACTIVE_UNIT_THRESHOLD).sum())


def mutual_information(q_z: Distribution, num_samples: int = 10, chunk: int = 100) -> tuple[float, float | None]:
    """I_q(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)], q(z) = (1/N) sum_n q(z|x_n), for q_z of batch (N,), and
    the estimate's Monte Carlo standard error: ``num_samples`` draws per example (each draw of all N examples an
    estimate; the mean of those and their standard error), ``chunk`` examples' draws against all N densities at
    a time. I >= 0, but near 0 an estimate can come out below it, by about its standard error."""
    n, event = q_z.batch_shape[0], len(q_z.event_shape)
    estimates = []
    for _ in range(num_samples):
        z = q_z.sample()  # (N, L)
        log_q_aggregate = torch.cat([  # row n: log (1/N) sum_m q(z_n | x_m)
            torch.logsumexp(log_density(q_z, rows.unsqueeze(-1 - event)), dim=-1) for rows in z.split(chunk)
        ]) - math.log(n)
        estimates.append((q_z.log_prob(z) - log_q_aggregate).mean())
    return mean_and_se(torch.stack(estimates))


def log_density(q: Distribution, value: Tensor) -> Tensor:
    """q.log_prob(value), -inf where value is outside q's support (a q whose support depends on x: a Uniform's),
    where torch's check of the argument would raise and its formula may give NaN."""
    with validation(False):
        return torch.where(q.support.check(value), q.log_prob(value), -math.inf)


def kl_per_dimension(q_z: Distribution, p_z: Distribution) -> list[float] | None:
    """E_x KL(q(z_d|x) || p(z_d)) for each d of the flattened event, for factorized Gaussians q and p (else None)."""
    factorized = [isinstance(d, Independent) and isinstance(d.base_dist, Normal) for d in (q_z, p_z)]
    if not all(factorized):
        return None
    kl = kl_divergence(q_z.base_dist, p_z.base_dist).flatten(-q_z.reinterpreted_batch_ndims)  # (N, L)
    return kl.reshape(-1, kl.shape[-1]).mean(0).tolist()


def per_example(model: LatentVariableModel, tensors: Sequence[Tensor], settings: LocalEStep, iwae_samples: int = 0,
                batch_size: int = 100, progress: bool = False) -> tuple[dict[str, Tensor], Tensor | str]:
    """``refine`` over the rows of ``tensors`` = (x, *context) in batches: per example (N,) "elbo_amortized",
    "elbo_optimal" and (with ``iwae_samples``) "iwae", and the mean curve of the local E-steps (steps,). A model
    without ``e_step_problem``, or whose q has no parameters to optimize, gets its own estimator's amortized ELBO
    and IWAE bound, and in place of the curve the reason, a phrase."""
    device = next(model.parameters()).device
    batches = list(in_batches(tensors, batch_size, device))
    reason = not_covered(model, batches[0]) if batches else None
    columns, curve = {}, 0.0
    for batch in tqdm(batches, desc=f"local E-steps ({settings.steps} each)", unit="batch", leave=False,
                      disable=None if progress else True):
        if reason is None:
            found = refine(model, batch, settings, iwae_samples)
            curve = curve + found.pop("curve") * len(batch[0]) / len(tensors[0])
        else:
            with eval_mode(model):
                found = {"elbo_amortized": torch.stack([model.elbo(*batch).elbo
                                                        for _ in range(settings.eval_samples)]).mean(0)}
                if iwae_samples:
                    found["iwae"] = model.iwae_bound(*batch, num_samples=iwae_samples)
        for key, values in found.items():
            columns.setdefault(key, []).append(values.cpu())
    return {key: torch.cat(values) for key, values in columns.items()}, curve if reason is None else reason


def diagnose(model: LatentVariableModel, tensors: Sequence[Tensor], settings: LocalEStep = LocalEStep(),
             iwae_samples: int = 5000, batch_size: int = 100, progress: bool = False) -> dict:
    """The gaps, their standard errors, the local E-steps' curve, the number of examples whose q* is q_phi
    (``q_phi_kept``) and the collapse diagnostics of ``model`` on the rows of ``tensors`` = (x, *context) (all of
    them: the caller chooses the subset and seeds the generator).

    log p(x) is ``model.log_evidence`` where the model has it, else the IWAE bound with q* as proposal (closer to
    p(z|x) than q_phi in KL(q || p), so usually a tighter bound), or with q_phi for a model without ``e_step_problem``."""
    if len(tensors[0]) < 2:
        raise ValueError(f"diagnose needs at least 2 examples (active units and standard errors are over examples), "
                         f"got {len(tensors[0])}")
    exact = callable(getattr(model, "log_evidence", None))
    columns, curve = per_example(model, tensors, settings, 0 if exact else iwae_samples, batch_size, progress)
    if exact:
        with eval_mode(model) as device:
            columns["iwae"] = torch.cat([model.log_evidence(*batch).cpu()
                                         for batch in in_batches(tensors, batch_size, device)])
    covered = isinstance(curve, Tensor)
    log_px, amortized = columns["iwae"], columns["elbo_amortized"]
    proposal = "q*" if covered else "q_phi"
    result = {"model": model.name, "examples": len(tensors[0]),
              "log_evidence": "exact" if exact else f"IWAE, K = {iwae_samples}, proposal {proposal}",
              "local_e_step": asdict(settings) if covered else f"not covered: {curve}"}
    gaps = {"log_px": log_px, "elbo_amortized": amortized, "total_gap": log_px - amortized}
    if covered:
        optimal = columns["elbo_optimal"]
        gaps.update(elbo_optimal=optimal, approximation_gap=log_px - optimal, amortization_gap=optimal - amortized)
    for key, values in gaps.items():
        result[key], result[key + "_se"] = mean_and_se(values)
    if covered:  # how many examples the local E-steps did not improve, as far as their estimates tell
        result["q_phi_kept"] = int(columns["q_phi_kept"].sum())
        result["e_step_curve"] = curve.tolist()
    result.update(collapse(model, tensors))
    return result


def collapse(model: LatentVariableModel, tensors: Sequence[Tensor]) -> dict:
    """Active units (any model, from ``encode``), and for a model with ``factors`` the KL per dimension and
    I_q(x; z) over the rows of ``tensors``."""
    with eval_mode(model) as device:
        batch = [t.to(device) for t in tensors]
        codes = model.encode(*batch)
        result = {"latent_dim": codes.shape[-1], "active_units": active_units(codes)}
        try:
            q_z, p_z, _ = model.factors(*batch)
        except NotImplementedError:
            return result
        per_dimension = kl_per_dimension(q_z, p_z)
        result["kl"] = kl_term(q_z, p_z, q_z.sample((10,)), "aevb").mean().item()  # sampled where not analytic
        if per_dimension is not None:
            result["kl_per_dimension"] = per_dimension
        result["mutual_information"], result["mutual_information_se"] = mutual_information(q_z)
        result["mutual_information_bound"] = math.log(len(codes))
    return result
