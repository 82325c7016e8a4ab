"""The latent variable model interface every aevb model implements.

A model is two ``nn.Module`` attributes, kept apart because EM treats them apart:

* ``generative`` holds theta, the parameters of p_theta(x, z) (stepped by the M-step);
* ``inference`` holds phi, the parameters of the amortized posterior q_phi(z|x) (stepped by the E-step).

A model with one latent vector describes its three factors in ``factors`` and inherits the ELBO and
importance weights from :mod:`aevb.elbo`; a model with a structured latent (a discrete component, a
sequence) overrides ``elbo`` and ``log_importance_weights`` instead. Batches are tuples ``(x, *context)``,
where context is, e.g., the label y of a conditional model.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import Callable

from torch import Tensor, nn
from torch.distributions import Distribution

from aevb import elbo as estimators

PARAMETER_GROUPS = ("generative", "inference")


class LatentVariableModel(nn.Module, ABC):
    """Base class: ``generative`` (theta) and ``inference`` (phi) modules, ELBO, sampling, encoding."""

    generative: nn.Module
    inference: nn.Module

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{'generative': theta, 'inference': phi}: the two groups the E- and M-steps act on."""
        return {name: list(getattr(self, name).parameters()) for name in PARAMETER_GROUPS}

    def factors(self, x: Tensor, *context: Tensor) -> tuple[Distribution, Distribution, Callable[[Tensor], Distribution]]:
        """(q(z|x), p(z), z -> p(x|z)) for a batch: the three factors of a one-latent model."""
        raise NotImplementedError(f"{type(self).__name__} must define factors() or override elbo()")

    def elbo(self, x: Tensor, *context: Tensor, estimator: str = "aevb") -> estimators.ELBO:
        """Per-example ELBO estimate and its terms, shapes (B,)."""
        q_z, p_z, p_x_given_z = self.factors(x, *context)
        return estimators.elbo(x, q_z, p_z, p_x_given_z, estimator)

    def log_importance_weights(self, x: Tensor, *context: Tensor, num_samples: int) -> Tensor:
        """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape (K, B)."""
        q_z, p_z, p_x_given_z = self.factors(x, *context)
        return estimators.log_importance_weights(x, q_z, p_z, p_x_given_z, num_samples)

    def iwae_bound(self, x: Tensor, *context: Tensor, num_samples: int, chunk_size: int = 100) -> Tensor:
        """K-sample importance-weighted lower bound on log p(x), shape (B,)."""
        return estimators.iwae_bound(
            lambda k: self.log_importance_weights(x, *context, num_samples=k), num_samples, chunk_size
        )

    @abstractmethod
    def sample(self, num_samples: int, *context: Tensor) -> Tensor:
        """Draw x ~ p_theta(x) (or p_theta(x | context)), shape (N, ...)."""

    @abstractmethod
    def encode(self, x: Tensor, *context: Tensor) -> Tensor:
        """Posterior mean E_q[z | x], shape (B, L)."""

    def checkpoint(self) -> dict:
        """Everything needed to rebuild the model: its registry name, config and state."""
        return {"model": self.name, "config": asdict(self.config), "state_dict": self.state_dict()}
