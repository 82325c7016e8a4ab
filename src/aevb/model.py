"""The latent variable model contract every aevb model follows, the user's own included.

A model is a p_theta(x, z) with an amortized approximate posterior q_phi(z | x), and its two parameter
groups are two ``nn.Module`` attributes, kept apart because EM treats them apart:

* ``generative`` holds theta, every parameter of p_theta(x, z) (the M-step moves them);
* ``inference`` holds phi, every parameter of q_phi(z | x) (the E-step moves them).

What a model declares (``docs/models.md`` says it at length, with an example):

* ``Config``: a dataclass of its hyperparameters; ``Model(Config(...))`` builds the model and a checkpoint
  keeps ``asdict(config)`` as JSON. ``aevb fit`` fills the fields named ``data_dim`` (D: the size of one
  example, or of one step of a sequence), ``seq_len`` (T: then the data are sequences (N, T, D)) and
  ``num_classes`` (then batches carry the label y) from the data, and turns every other field into a flag
  (``latent_dim`` -> ``--latent-dim``; ``Literal`` types give the choices, ``metadata={"help": ...}`` the help).
* its ELBO, one of two ways:
  - one latent vector: ``factors(x, *context)`` returns (q(z|x), p(z), z -> p(x|z)) as ``torch.distributions``
    objects, and ``elbo``, ``log_importance_weights`` and ``iwae_bound`` come from :mod:`aevb.elbo`;
  - a structured latent (a discrete component, a sequence): override ``elbo`` and ``log_importance_weights``.
* ``sample(n, *context)``: x ~ p_theta(x); a model that overrides ``elbo`` also defines ``encode(x, *context)``,
  a code per example (by default the posterior mean E_q[z | x] of ``factors``).

Optional: ``estimators``, the names ``elbo(x, estimator=...)`` takes (a model that overrides ``elbo`` sets
them, ``()`` for none), ``hooks``, what the model adds to the fit path (``aevb.fitting.Hooks``: its own
data, metrics, summary entries, figures and flags), ``e_step_problem`` for a model that overrides ``elbo``
(what ``aevb diagnose`` optimizes per example), and ``log_evidence(x)`` where log p(x) is exact. Everything else
is derived: ``name`` (the class name in lower case), ``parameter_groups``, the estimators, ``encode``,
``e_step_problem`` (from ``factors``), ``checkpoint`` and ``from_checkpoint``. Batches are tuples ``(x, *context)``; the context of a model with a
``num_classes`` field is the label y, integer class indices (B,). A model may raise ``ValueError`` for data it
cannot model (e.g. values outside its likelihood's support); ``aevb fit`` reports it as one line.
``aevb.testing.check_model`` holds a model to this contract.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, is_dataclass
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from aevb import elbo as estimators
from aevb.elbo import IWAE_CHUNK

PARAMETER_GROUPS = ("generative", "inference")


class EStepProblem(NamedTuple):
    """The E-step's problem at a batch x, theta fixed: q_phi's factors at x by name (each of batch shape (B, ...),
    examples first, so that each example's parameters are its own slice), and
    two functions of any q of the same family: an S-sample estimate of ELBO(x; q) and the K-sample IWAE bound on
    log p(x) with q as proposal, both shape (B,)."""

    q: dict[str, Distribution]
    elbo: Callable[[dict[str, Distribution], int], Tensor]
    iwae_bound: Callable[[dict[str, Distribution], int], Tensor]
MAX_PARAMETERS = 2**31  # 8 GiB of float32 weights (and as much again for each of Adam's two moments)


def build(cls: type["LatentVariableModel"], config) -> "LatentVariableModel":
    """``cls(config)``, its size checked first on the meta device, where nothing is allocated: a config from the
    command line or a run directory is untrusted, and a width of 10^11 must be one line, not an attempt to
    allocate it. ValueError above ``MAX_PARAMETERS``. A model that cannot be built on the meta device (its
    constructor reads a tensor's value) is built without the check."""
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in cls(config).parameters())
    except (RuntimeError, NotImplementedError) as e:
        if "overflow" in str(e):  # a layer beyond even int64's count of elements
            raise ValueError("this config asks for layers whose sizes overflow int64; choose smaller sizes") from None
        count = 0
    if count > MAX_PARAMETERS:
        raise ValueError(f"this config has {count:,} parameters, more than the {MAX_PARAMETERS:,} (2^31) aevb builds; "
                         "choose smaller sizes")
    return cls(config)


class LatentVariableModel(nn.Module, ABC):
    """Base class: ``generative`` (theta) and ``inference`` (phi) modules, ELBO, sampling, encoding."""

    Config: ClassVar[type]  # required: the dataclass of hyperparameters
    name: ClassVar[str]  # derived: the class name in lower case, unless the class sets one
    estimators: ClassVar[tuple[str, ...]] = estimators.ESTIMATORS  # what ``elbo(..., estimator=)`` takes
    hooks: ClassVar[type | str | None] = None  # what the model adds to ``aevb fit`` (aevb.fitting.Hooks)
    generative: nn.Module
    inference: nn.Module

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__.lower()

    def __init__(self, config) -> None:
        if not is_dataclass(getattr(type(self), "Config", None)):
            raise TypeError(f"{type(self).__name__} must declare Config, the dataclass of its hyperparameters")
        if not isinstance(config, type(self).Config):
            raise TypeError(f"{type(self).__name__} takes a {type(self).Config.__name__}, got {type(config).__name__}")
        super().__init__()
        self.config = config

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{'generative': theta, 'inference': phi}: the two groups the E- and M-steps act on."""
        missing = [name for name in PARAMETER_GROUPS if not isinstance(getattr(self, name, None), nn.Module)]
        if missing:
            raise TypeError(f"{type(self).__name__} must set {' and '.join(missing)} to an nn.Module in __init__")
        return {name: list(getattr(self, name).parameters()) for name in PARAMETER_GROUPS}

    def parameter_group_problem(self) -> str | None:
        """What keeps the groups from being stepped apart, or None: a trainable parameter in both (an E-step would
        move theta) or in neither (no step would move it). Frozen parameters (``requires_grad=False``) may be
        anywhere."""
        groups = {name: {id(p) for p in params if p.requires_grad} for name, params in self.parameter_groups().items()}
        names = {id(p): n for n, p in self.named_parameters() if p.requires_grad}
        both = [n for i, n in names.items() if i in groups["generative"] & groups["inference"]]
        if both:
            return f"{', '.join(both)} are in both groups; expected theta and phi disjoint"
        neither = [n for i, n in names.items() if i not in groups["generative"] | groups["inference"]]
        if neither:
            return (f"{', '.join(neither)} in neither group; expected every parameter in model.generative (theta) or "
                    "model.inference (phi), or frozen (requires_grad=False)")
        return None

    def factors(self, x: Tensor, *context: Tensor) -> tuple[Distribution, Distribution, Callable[[Tensor], Distribution]]:
        """(q(z|x), p(z), z -> p(x|z)) for a batch: the three factors of a one-latent model."""
        raise NotImplementedError(f"{type(self).__name__} must define factors() or override elbo() and "
                                  "log_importance_weights()")

    def elbo(self, x: Tensor, *context: Tensor, estimator: str = "aevb") -> estimators.ELBO:
        """Per-example ELBO estimate and its terms, shapes (B,)."""
        q_z, p_z, p_x_given_z = self.factors(x, *context)
        return estimators.elbo(x, q_z, p_z, p_x_given_z, estimator)

    def e_step_problem(self, x: Tensor, *context: Tensor) -> EStepProblem:
        """The E-step's problem at x with theta fixed (``EStepProblem``), which ``aevb.diagnostics`` solves per example.

        From ``factors``: q = {"z": q(z|x)}, ELBO(x; q) = E_q[log p(x|z)] - KL(q || p(z)), and the IWAE bound with
        q as proposal. A structured model overrides it (the GMVAE: {"y": q(y|x), "z": q(z|x,y)} with y summed
        out), or leaves it undefined where its family has no per-example parameters (the VRNN's q(z_t | h_t, x_t)
        reads the sampled z_<t through h_t).
        """
        q_z, p_z, p_x_given_z = self.factors(x, *context)
        return EStepProblem(
            {"z": q_z},
            lambda q, num_samples: estimators.elbo(x, q["z"], p_z, p_x_given_z, "aevb", num_samples).elbo,
            lambda q, num_samples: estimators.iwae_bound(
                lambda k: estimators.log_importance_weights(x, q["z"], p_z, p_x_given_z, k), num_samples),
        )

    def log_importance_weights(self, x: Tensor, *context: Tensor, num_samples: int) -> Tensor:
        """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape (K, B)."""
        q_z, p_z, p_x_given_z = self.factors(x, *context)
        return estimators.log_importance_weights(x, q_z, p_z, p_x_given_z, num_samples)

    def iwae_bound(self, x: Tensor, *context: Tensor, num_samples: int, chunk_size: int = IWAE_CHUNK) -> Tensor:
        """K-sample importance-weighted lower bound on log p(x), shape (B,)."""
        return estimators.iwae_bound(
            lambda k: self.log_importance_weights(x, *context, num_samples=k), num_samples, chunk_size
        )

    @abstractmethod
    def sample(self, num_samples: int, *context: Tensor) -> Tensor:
        """Draw x ~ p_theta(x) (or p_theta(x | context)), shape (N, ...)."""

    def encode(self, x: Tensor, *context: Tensor) -> Tensor:
        """A code per example, shape (B, L): by default the posterior mean E_q[z | x] of ``factors``, flattened
        (a latent of event shape (T, L') gives a code of T * L' numbers)."""
        try:
            q_z = self.factors(x, *context)[0]
        except NotImplementedError:
            raise NotImplementedError(f"{type(self).__name__} defines no encode(): a model with an elbo() of its own "
                                      "defines encode(x), a code per example (B, L)") from None
        try:
            mean = q_z.mean
        except NotImplementedError:
            raise NotImplementedError(f"{type(self).__name__}'s q(z|x), a {type(q_z).__name__}, has no mean: define "
                                      "encode() to give a code per example") from None
        return mean.flatten(1) if mean.dim() > 2 else mean  # (B, L), or what check_model names as wrong

    def checkpoint(self) -> dict:
        """Everything needed to rebuild the model: its config (JSON-able) and its state (tensors only)."""
        return {"config": asdict(self.config), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "LatentVariableModel":
        """The model ``checkpoint()`` saved (a config that came back from JSON included)."""
        with torch.random.fork_rng(devices=[]):  # the initialization's draws, overwritten: the caller's state is kept
            model = build(cls, cls.Config(**checkpoint["config"]))
        model.load_state_dict(checkpoint["state_dict"], assign=True)  # assign: the saved dtypes, not the defaults
        return model
