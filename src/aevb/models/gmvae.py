"""Gaussian-mixture VAE: a discrete cluster y and a continuous code z (tutorial §5.5).

Generative model (theta), ``variant='gmm'`` (the default):
    y ~ OneHotCategorical(1/C),    z | y ~ N(loc(y), diag(scale(y)^2)),    x | z ~ prod_d Bernoulli(sigmoid(f(z))_d)
with loc linear and scale softplus-linear in the one-hot y, f an MLP. ``variant='m2'`` is the alternative of
§5.5.1 (Kingma et al.'s M2 model): y ~ OneHotCategorical(1/C), z ~ N(0, I), x | y, z ~ Bernoulli(sigmoid(f(z, y))).
Variational family (phi): q(y, z | x) = q(y|x) q(z|x,y),
    q(y|x) = OneHotCategorical(logits(x)),    q(z|x,y) = N(loc(x, y), diag(scale(x, y)^2)).

ELBO estimators (``elbo(x, estimator=...)``):
* ``marginal`` (Estimator 1): the exact sum over the C values of y,
      ELBO(x) = sum_y q(y|x) [log p(x|z_y) - KL(q(z|x,y) || p(z|y))] - KL(q(y|x) || p(y)),   z_y ~ q(z|x,y),
  all C components in one batched pass. KL(q(y|x) || p(y)) = log C - H(q(y|x)): this is the true bound on
  log p(x); the tutorial's printed ELBOs leave out the constant -log C (2.30 nats for C = 10).
* ``gumbel-relaxed`` (Estimator 2, first context): one relaxed sample y~ = softmax((logits + g) / tau),
  g ~ Gumbel(0, 1), in z's path, and the sampled relaxed KL log q_tau(y~|x) - log p_tau(y~) with the Concrete
  densities. That KL is the relaxed model's, not the categorical one: its expectation does not depend on tau
  and is at least KL(q(y|x) || p(y)) (data processing through argmax), so this bound is looser.
* ``gumbel-analytic`` (second context): the relaxed y~ in z's path only, the analytic KL(q(y|x) || p(y)).
With ``straight_through``, the Gumbel estimators feed the one-hot argmax of y~ forward and y~'s gradient backward.
Evaluation should use ``marginal``: it is the discrete model's bound, whatever estimator trained the model.

A warm-up of the discrete KL (``discrete_kl_weight`` = w, set between epochs by ``KLWeightSchedule``) trains on
    ELBO(x) + (1 - w) KL(q(y|x) || p(y))
while w != 1, every estimator alike: below 1 the entropy of q(y|x) is rewarded less, above 1 more. The ELBO itself
is what every record and evaluation reports. (On MNIST, from w = 0 every example fell into one cluster and from
w = 3 q(y|x) went uniform: the README's GMVAE section.) Averaged over the data the discrete KL is the mutual
information of x and y under q plus a balance term, E_x KL(q(y|x) || p(y)) = I_q(x; y) + KL(q_bar || p(y)) with
q_bar = E_x q(y|x); with ``warmup_term = "mutual-information"`` the warm-up weights the first part only,
    ELBO(x) + (1 - w) [KL(q(y|x) || p(y)) - KL(q_bar || p(y))],    q_bar the batch's mean q(y|x),
so the balance term keeps q(y|x) from putting every example in one cluster while the confidence of each
assignment is rewarded.

The importance-weighted bound (``iwae_bound``) sums y out as well: with K draws z_k ~ q(z|x,y) for each y,
    log p(x) >= log sum_y p(y) (1/K) sum_k p(x, z_k | y) / q(z_k | x, y),
since the inner average is unbiased for p(x|y) (Jensen's inequality then gives the bound). The sum over y is
exact, so q(y|x) drops out and only z is sampled: less variance than drawing (y_k, z_k) ~ q(y|x) q(z|x,y)
(``log_importance_weights``), for C times the decoder passes (``benchmarks/gmvae_iwae_variance.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, OneHotCategorical
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from aevb import elbo as estimators
from aevb.elbo import ELBO, IWAE_CHUNK
from aevb.likelihoods import diagonal_normal, standard_normal
from aevb.model import EStepProblem, LatentVariableModel
from aevb.models.vae import Decoder, GaussianEncoder, mlp

ESTIMATORS = ("marginal", "gumbel-relaxed", "gumbel-analytic")
WARMUP_TERMS = ("kl", "mutual-information")
Variant = Literal["gmm", "m2"]
VARIANTS = get_args(Variant)


@dataclass
class GMVAEConfig:
    data_dim: int = 784
    num_components: int = field(default=10, metadata={"flag": "components", "help": "number of clusters C"})
    latent_dim: int = field(default=64, metadata={"help": "latent dimension L"})
    hidden: Sequence[int] = field(default=(512, 512), metadata={"help": "hidden layer widths"})
    variant: Variant = field(default="gmm", metadata={
        "help": "gmm: p(x|z) p(z|y) p(y); m2: p(x|y,z) p(z) p(y)"})
    temperature: float = field(default=0.5, metadata={
        "help": "Gumbel-softmax temperature tau (the first epoch's under a decay)"})
    straight_through: bool = field(default=False, metadata={
        "help": "Gumbel estimators: one-hot argmax forward, relaxed gradient backward"})

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)  # a JSON round trip gives a list
        if self.num_components < 2:
            raise ValueError(f"a mixture needs at least 2 components, got {self.num_components}")
        if self.latent_dim < 1 or self.data_dim < 1 or not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"dimensions must be positive: data {self.data_dim}, latent {self.latent_dim}, "
                             f"hidden {','.join(map(str, self.hidden)) or 'none'}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown GMVAE variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if not self.temperature > 0:
            raise ValueError(f"the Gumbel-softmax temperature must be positive, got {self.temperature}")


def glorot_init(module: nn.Module) -> None:
    """Glorot-normal weights and zero biases for every linear layer (the tutorial's initialization)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class Generative(nn.Module):
    """theta: p(z|y) and p(x|z) (``gmm``), or p(z) = N(0, I) and p(x|y,z) (``m2``); p(y) is uniform, fixed."""

    def __init__(self, config: GMVAEConfig) -> None:
        super().__init__()
        c, m2 = config, config.variant == "m2"
        self.m2, self.latent_dim = m2, c.latent_dim
        # p(z | y) = N(A y + a, diag(softplus(B y + b)^2)): the Gaussian head without hidden layers
        self.prior = None if m2 else GaussianEncoder(c.num_components, (), c.latent_dim, dropout=0.0)
        decoder_in = c.latent_dim + (c.num_components if m2 else 0)
        self.decoder = Decoder(decoder_in, c.hidden, c.data_dim, "bernoulli", None, dropout=0.0)

    def p_z_given_y(self, y: Tensor) -> Independent:
        """p(z | y) for y (..., C): batch shape (...), event (L,)."""
        if self.m2:
            return standard_normal(self.latent_dim, y).expand(y.shape[:-1])
        return self.prior(y)

    def p_x_given_z(self, z: Tensor, y: Tensor) -> Independent:
        """p(x | z) (or p(x | y, z) for m2) for z (..., B, L), y (..., B or 1, C): batch (..., B), event (D,)."""
        if self.m2:
            return self.decoder(torch.cat([z, y.expand(*z.shape[:-1], y.shape[-1])], -1))
        return self.decoder(z)


class Inference(nn.Module):
    """phi: q(y|x) and q(z|x,y). q(z|x,y)'s first layer W [x; y] + b is split as (W_x x + b) + W_y y,
    so the x part, the costly one, is computed once per example and shared by every value of y."""

    def __init__(self, config: GMVAEConfig) -> None:
        super().__init__()
        d, c, h = config.data_dim, config.num_components, config.hidden
        self.logits_y = nn.Sequential(mlp([d, *h], dropout=0.0), nn.Linear(h[-1], c))
        self.z_from_x = nn.Linear(d, h[0])
        self.z_from_y = nn.Linear(c, h[0], bias=False)
        self.z_rest = GaussianEncoder(h[0], h[1:], config.latent_dim, dropout=0.0)

    def q_y_given_x(self, x: Tensor) -> OneHotCategorical:  # x (B, D) -> batch (B,), event (C,)
        return OneHotCategorical(logits=self.logits_y(x), validate_args=False)

    def q_z_given_x_y(self, x_part: Tensor, y: Tensor) -> Independent:
        """q(z|x,y) from x_part = z_from_x(x) (B, H) and y (..., B or 1, C): batch (..., B), event (L,)."""
        return self.z_rest(F.relu(x_part + self.z_from_y(y)))


def swap_batch(q: Independent) -> Independent:
    """A diagonal Gaussian with its two batch dimensions swapped: (C, B) to (B, C), and back."""
    return diagonal_normal(q.base_dist.loc.transpose(0, 1), q.base_dist.scale.transpose(0, 1))


class GMVAE(LatentVariableModel):
    """Gaussian-mixture VAE on binary data, trained by exact marginalization of y or by Gumbel-softmax."""

    Config = GMVAEConfig
    hooks = "aevb.experiments.gmvae:GMVAEHooks"
    estimators = ESTIMATORS

    def __init__(self, config: GMVAEConfig = GMVAEConfig()) -> None:
        super().__init__(config)
        self.generative = Generative(config)
        self.inference = Inference(config)
        glorot_init(self)
        # tau, which a schedule changes between epochs, is a tensor: a compiled ELBO reads it as an input, where a
        # Python number would be compiled in, afresh for every value. It is part of the model's state, so a
        # checkpoint (and a resumed fit) has the temperature the schedule had reached.
        self.register_buffer("tau", torch.tensor(float(config.temperature)))
        # the weight w of KL(q(y|x) || p(y)) in the training objective, a buffer for the same reasons (module docstring)
        self.register_buffer("discrete_kl_weight", torch.tensor(1.0))
        self.warmup_term = "kl"  # what w weighs: the whole discrete KL, or its mutual information (module docstring)

    @property
    def temperature(self) -> float:
        """The Gumbel-softmax temperature tau in use."""
        return self.tau.item()

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.tau.fill_(value)

    def components(self) -> Tensor:
        """Every value of y, one-hot, as a (C, 1, C) batch that broadcasts against (C, B, ...)."""
        weight = self.inference.z_from_y.weight
        return torch.eye(self.config.num_components, dtype=weight.dtype, device=weight.device)[:, None, :]

    def p_y(self) -> OneHotCategorical:
        logits = self.inference.z_from_y.weight.new_zeros(self.config.num_components)
        return OneHotCategorical(logits=logits, validate_args=False)

    def terms(self, log_likelihood: Tensor, kl_z: Tensor, kl_y: Tensor, q_y: OneHotCategorical) -> ELBO:
        """The ELBO from its terms (B,) each; in training, the objective of the discrete KL's warm-up (module
        docstring), which for the mutual-information warm-up reads q_bar from ``q_y`` (batch (B,)): the mean over
        the batch, or over this process's rows of it under torch.distributed."""
        kl = kl_z + kl_y
        objective = None
        if self.training:
            objective = log_likelihood - kl_z - self.discrete_kl_weight * kl_y
            if self.warmup_term == "mutual-information":  # the balance term KL(q_bar || p(y)) back at full weight
                q_bar = OneHotCategorical(probs=q_y.probs.mean(0), validate_args=False)
                objective = objective - (1 - self.discrete_kl_weight) * self.kl_y(q_bar)
        return ELBO(log_likelihood - kl, log_likelihood, kl, objective)

    def kl_y(self, q_y: OneHotCategorical) -> Tensor:
        """KL(q(y|x) || p(y)) = sum_y q(y|x) (log q(y|x) - log p(y)), shape (B,).

        Written out because torch's registered categorical KL masks zero probabilities by boolean
        indexing, which waits for the GPU (a host-device sync) at every step; q's logits are finite here.
        """
        return (q_y.probs * (q_y.logits - self.p_y().logits)).sum(-1)

    def given_y(self, y: Tensor) -> tuple[Independent, Callable[[Tensor], Independent]]:
        """(p(z|y), z -> p(x|z, y)) for y (..., B or 1, C): with y fixed, the prior and likelihood that
        ``aevb.elbo``'s estimators take, as a one-latent model's ``factors`` gives them."""
        return self.generative.p_z_given_y(y), lambda z: self.generative.p_x_given_z(z, y)

    def marginal_elbo(self, x: Tensor, q_y: OneHotCategorical, q_z: Independent, num_samples: int = 1) -> ELBO:
        """sum_y q(y|x) [(1/S) sum_s log p(x|z_ys) - KL(q(z|x,y) || p(z|y))] - KL(q(y|x) || p(y)), z_ys ~ q(z|x,y),
        for q_y of batch (B,) and q_z of batch (C, B), one per value of y; shapes (B,)."""
        elbo_given_y = estimators.elbo(x, q_z, *self.given_y(self.components()), num_samples=num_samples)  # (C, B)
        weights = q_y.probs.T  # (C, B)
        return self.terms((weights * elbo_given_y.log_likelihood).sum(0), (weights * elbo_given_y.kl).sum(0),
                          self.kl_y(q_y), q_y)

    def e_step_problem(self, x: Tensor) -> EStepProblem:
        """q = {"y": q(y|x), "z": q(z|x,y) for every y (batch (B, C): examples first, as the problem's factors
        are)}, the marginal ELBO, and the IWAE bound with y summed out (q(y|x) drops out of it)."""
        q = {"y": self.inference.q_y_given_x(x),
             "z": swap_batch(self.inference.q_z_given_x_y(self.inference.z_from_x(x), self.components()))}
        return EStepProblem(q, lambda q, num_samples: self.marginal_elbo(x, q["y"], swap_batch(q["z"]),
                                                                         num_samples).elbo,
                            lambda q, num_samples: self.iwae_bound(x, num_samples, q_z=swap_batch(q["z"])))

    def elbo(self, x: Tensor, estimator: str = "marginal") -> ELBO:
        """Per-example ELBO estimate, shapes (B,), by one of ``ESTIMATORS`` (see the module docstring)."""
        q_y = self.inference.q_y_given_x(x)
        x_part = self.inference.z_from_x(x)  # (B, H), once per example
        if estimator == "marginal":
            return self.marginal_elbo(x, q_y, self.inference.q_z_given_x_y(x_part, self.components()))
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown GMVAE estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        # Concrete samples and densities in log space (ExpRelaxedCategorical): stable for confident logits,
        # and log q - log p is the same as for the Concrete itself (the Jacobian of exp cancels).
        relaxed_q_y = ExpRelaxedCategorical(self.tau, logits=q_y.logits, validate_args=False)
        log_y = relaxed_q_y.rsample()  # (B, C)
        y = log_y.exp()
        if self.config.straight_through:
            y = y + (F.one_hot(y.argmax(-1), y.shape[-1]).to(y) - y).detach()
        elbo_given_y = estimators.elbo(x, self.inference.q_z_given_x_y(x_part, y), *self.given_y(y))  # (B,)
        if estimator == "gumbel-analytic":
            kl_y = self.kl_y(q_y)
        else:
            relaxed_p_y = ExpRelaxedCategorical(self.tau, logits=self.p_y().logits, validate_args=False)
            kl_y = relaxed_q_y.log_prob(log_y) - relaxed_p_y.log_prob(log_y)
        return self.terms(elbo_given_y.log_likelihood, elbo_given_y.kl, kl_y, q_y)

    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        """log p(x|z) + log p(z|y) + log p(y) - log q(y|x) - log q(z|x,y) at (y, z) ~ q(y|x) q(z|x,y); (K, B)."""
        q_y = self.inference.q_y_given_x(x)
        y = q_y.sample((num_samples,))  # (K, B, C)
        q_z = self.inference.q_z_given_x_y(self.inference.z_from_x(x), y)
        z = q_z.rsample()  # (K, B, L)
        log_joint = (self.generative.p_x_given_z(z, y).log_prob(x) + self.generative.p_z_given_y(y).log_prob(z)
                     + self.p_y().log_prob(y))
        return log_joint - q_y.log_prob(y) - q_z.log_prob(z)

    def log_importance_weights_given_y(self, x: Tensor, num_samples: int, q_z: Independent | None = None) -> Tensor:
        """log p(x|z_k) + log p(z_k|y) - log q(z_k|x,y), z_k ~ q(z|x,y), for every y; shape (K, C, B).
        ``q_z`` (batch (C, B)) replaces q_phi(z|x,y) as the proposal."""
        y = self.components()  # (C, 1, C)
        if q_z is None:
            q_z = self.inference.q_z_given_x_y(self.inference.z_from_x(x), y)  # batch (C, B)
        return estimators.log_importance_weights(x, q_z, *self.given_y(y), num_samples)  # z (K, C, B, L)

    def iwae_bound(self, x: Tensor, num_samples: int, chunk_size: int = IWAE_CHUNK, q_z: Independent | None = None) -> Tensor:
        """log sum_y p(y) (1/K) sum_k p(x, z_k | y) / q(z_k | x, y), K draws of z for each y (module docstring);
        shape (B,). Chunks of ``chunk_size`` // C draws keep the memory of the sampled-y bound's chunks."""
        per_y = estimators.iwae_bound(lambda k: self.log_importance_weights_given_y(x, k, q_z), num_samples,
                                      max(1, chunk_size // self.config.num_components))  # log p(x|y) bounds, (C, B)
        return torch.logsumexp(per_y + self.p_y().logits.log_softmax(-1)[:, None], dim=0)

    def sample(self, num_samples: int) -> Tensor:
        """x ~ p(x) through y ~ p(y), z ~ p(z|y); shape (N, D)."""
        y = self.p_y().sample((num_samples,))  # (N, C)
        z = self.generative.p_z_given_y(y).sample()  # (N, L)
        return self.generative.p_x_given_z(z, y).sample()

    def generate(self, num_per_component: int) -> Tensor:
        """Bernoulli means p(x = 1 | z) (``m2``: p(x = 1 | y = c, z)), z ~ p(z | y = c), for each component c;
        shape (C, N, D)."""
        y = self.components().expand(-1, num_per_component, -1)  # (C, N, C)
        z = self.generative.p_z_given_y(y).sample()  # (C, N, L)
        return self.generative.p_x_given_z(z, y).mean

    def cluster_probs(self, x: Tensor) -> Tensor:
        """q(y|x), shape (B, C)."""
        return self.inference.q_y_given_x(x).probs

    def encode(self, x: Tensor) -> Tensor:
        """E_q[z | x] = sum_y q(y|x) E[z | x, y], shape (B, L)."""
        q_z = self.inference.q_z_given_x_y(self.inference.z_from_x(x), self.components())  # batch (C, B)
        return (self.cluster_probs(x).T[..., None] * q_z.mean).sum(0)


class EpochSchedule:
    """A value for each 0-based epoch e (``__call__``), held in a model buffer that a trainer callback sets."""

    def callback(self, buffer: Tensor):
        """A trainer callback: after each epoch, set ``buffer`` to the value the next epoch trains with. A
        ``Trainer.fit`` call that ends inside an epoch sets it too, so the rest of that epoch, in the next call,
        trains with the next epoch's value (``aevb fit`` trains in one call, and resumes with the checkpoint's)."""

        def update(records: list[dict]) -> None:
            buffer.fill_(self(records[-1]["epoch"]))

        return update


@dataclass(frozen=True)
class TemperatureSchedule(EpochSchedule):
    """tau for 0-based epoch e: initial * decay^e, floored at minimum (or at initial, if that is lower)."""

    initial: float = 0.5
    decay: float = 1.0
    minimum: float = 0.1

    def __call__(self, epoch: int) -> float:
        return max(min(self.minimum, self.initial), self.initial * self.decay**epoch)


@dataclass(frozen=True)
class KLWeightSchedule(EpochSchedule):
    """The discrete KL's weight w for 0-based epoch e: linear from ``start`` at e = 0 to 1 at e = ``epochs``, then 1
    (always 1 for ``epochs`` = 0: no warm-up)."""

    start: float = 0.0
    epochs: int = 0

    def __call__(self, epoch: int) -> float:
        return 1.0 if epoch >= self.epochs else self.start + (1.0 - self.start) * epoch / self.epochs
