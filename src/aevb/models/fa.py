"""Factor analysis: the one model where every quantity of the EM view is exact (tutorial §5.2).

Generative model (theta = W, noise_std):
    z ~ N(0, I_L),    x | z ~ N(W z, Phi),    Phi = diag(noise_std^2),    W in R^{D x L}
so the evidence is exact, x ~ N(0, W W^T + Phi), and so is the posterior,
    p(z|x) = N(V* x, Sigma*),    Sigma* = (I + W^T Phi^-1 W)^-1,    V* = Sigma* W^T Phi^-1.
Approximate posterior (phi = V, Sigma): q(z|x) = N(V x, Sigma), Sigma = C C^T through a learned
Cholesky factor C, a family that contains the exact posterior; or the mean-field family, C diagonal.

Beside the AEVB machinery the model has the closed-form E-step (q := p(z|x)) and M-step
(theta := argmax ELBO), so ``fit_em`` is exact EM and the reference every AEVB fit is measured against.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, kl_divergence

from aevb.likelihoods import diagonal_normal, standard_normal
from aevb.model import LatentVariableModel

Posterior = Literal["full", "diagonal"]
POSTERIORS = get_args(Posterior)

# The tutorial's synthetic data set: L = 2, D = 3.
TUTORIAL_W = ((-0.5, -1.0), (-1.0, -1.0), (2.0, 0.5))
TUTORIAL_NOISE_STD = (0.4, 0.2, 0.3)

# The M-step floors each noise variance at NOISE_VAR_FLOOR * tr(S) / D: scikit-learn's SMALL = 1e-12, taken relative to
# the data's mean variance. Without a floor a constant column gets Phi_dd = 0, and Phi^-1 is infinite. Relative, so that
# the fit of c x is the fit of x scaled by c: an absolute 1e-12 swamps data whose variances are 1e-14, and next to
# variances of 1e8 it is below float64's resolution (1e8 * eps = 2e-8). At unit mean variance the two floors coincide.
NOISE_VAR_FLOOR = 1e-12


def inverse_softplus(y: Tensor) -> Tensor:
    """The x with softplus(x) = y, for y > 0."""
    return y + torch.log(-torch.expm1(-y))


@dataclass
class FAConfig:
    data_dim: int = 3
    latent_dim: int = field(default=2, metadata={"help": "latent dimension L"})
    posterior: Posterior = field(default="full", metadata={"help": "q's covariance"})


class LinearGaussianDecoder(nn.Module):
    """p_theta(x | z) = N(W z, diag(noise_std^2)), noise_std = softplus(raw_noise_std)."""

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(data_dim, latent_dim))  # W, (D, L)
        self.raw_noise_std = nn.Parameter(inverse_softplus(torch.ones(data_dim)))  # noise_std = 1

    @property
    def noise_std(self) -> Tensor:
        return F.softplus(self.raw_noise_std)

    def forward(self, z: Tensor) -> Independent:
        return diagonal_normal(z @ self.weight.T, self.noise_std)


class LinearGaussianEncoder(nn.Module):
    """q_phi(z | x) = N(V x, C C^T), C lower-triangular with a softplus diagonal (or diagonal only)."""

    def __init__(self, data_dim: int, latent_dim: int, posterior: str) -> None:
        super().__init__()
        self.full = posterior == "full"
        # V starts small, so q starts near the prior's mean: fewer runs stall at a rank-deficient saddle.
        self.weight = nn.Parameter(0.1 * torch.randn(latent_dim, data_dim) / data_dim**0.5)  # V, (L, D)
        self.raw_scale = nn.Parameter(torch.zeros((latent_dim, latent_dim) if self.full else (latent_dim,)))

    @property
    def scale_tril(self) -> Tensor:
        """C, (L, L): strictly-lower part free, diagonal through softplus."""
        diagonal = F.softplus(self.raw_scale.diagonal() if self.full else self.raw_scale)
        strictly_lower = self.raw_scale.tril(-1) if self.full else 0.0
        return strictly_lower + torch.diag_embed(diagonal)

    def forward(self, x: Tensor) -> MultivariateNormal | Independent:
        """N(V x, C C^T), batch (B,); the diagonal family as the product of its univariate Gaussians."""
        if self.full:
            return MultivariateNormal(x @ self.weight.T, scale_tril=self.scale_tril, validate_args=False)
        return diagonal_normal(x @ self.weight.T, F.softplus(self.raw_scale))


class FactorAnalysis(LatentVariableModel):
    """Linear-Gaussian latent variable model with an amortized linear-Gaussian posterior."""

    name = "fa"
    Config = FAConfig
    hooks = "aevb.experiments.fa:FAHooks"

    def __init__(self, config: FAConfig = FAConfig()) -> None:
        if config.posterior not in POSTERIORS:
            raise ValueError(f"unknown posterior {config.posterior!r}; choose one of {', '.join(POSTERIORS)}")
        if not 1 <= config.latent_dim <= config.data_dim:
            raise ValueError(
                f"latent dimension {config.latent_dim} must be between 1 and the data dimension {config.data_dim}"
            )
        super().__init__(config)
        self.generative = LinearGaussianDecoder(config.data_dim, config.latent_dim)
        self.inference = LinearGaussianEncoder(config.data_dim, config.latent_dim, config.posterior)

    # Factors --------------------------------------------------------------------------------
    def p_z(self) -> Independent:
        """p(z) = N(0, I_L), as a diagonal Gaussian: its KL from q needs no triangular solves (aevb.kl)."""
        return standard_normal(self.config.latent_dim, self.generative.weight)

    def factors(self, x: Tensor):
        return self.inference(x), self.p_z(), self.generative

    def sample(self, num_samples: int) -> Tensor:
        z = self.p_z().sample((num_samples,))  # (N, L)
        return self.generative(z).sample()  # (N, D)

    # Exact quantities -----------------------------------------------------------------------
    def p_x(self) -> MultivariateNormal:
        """The marginal p(x) = N(0, W W^T + Phi)."""
        w, noise_std = self.generative.weight, self.generative.noise_std
        covariance = w @ w.T + torch.diag(noise_std**2)
        return MultivariateNormal(torch.zeros_like(noise_std), covariance_matrix=covariance, validate_args=False)

    def log_evidence(self, x: Tensor) -> Tensor:
        """Exact log p(x), shape (B,)."""
        return self.p_x().log_prob(x)

    def posterior_parameters(self) -> tuple[Tensor, Tensor]:
        """(V*, Sigma*) of the exact posterior p(z|x) = N(V* x, Sigma*).

        Sigma* = (I + W^T Phi^-1 W)^-1 and V* = Sigma* W^T Phi^-1, on W's device and in its dtype.
        """
        w, noise_var = self.generative.weight, self.generative.noise_std**2
        identity = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
        precision = identity + w.T @ (w / noise_var[:, None])
        covariance = torch.linalg.inv(precision)
        return covariance @ (w.T / noise_var), covariance

    def posterior_errors(self) -> tuple[Tensor, Tensor]:
        """|V - V*| / |V*| and |Sigma - Sigma*| / |Sigma*| (Frobenius): q's distance from the exact posterior."""
        v, covariance = self.posterior_parameters()
        scale_tril = self.inference.scale_tril
        return (
            torch.linalg.matrix_norm(self.inference.weight - v) / torch.linalg.matrix_norm(v),
            torch.linalg.matrix_norm(scale_tril @ scale_tril.T - covariance) / torch.linalg.matrix_norm(covariance),
        )

    def p_z_given_x(self, x: Tensor) -> MultivariateNormal:
        """The exact posterior p(z|x) = N(V* x, Sigma*), batch shape (B,)."""
        v, covariance = self.posterior_parameters()
        return MultivariateNormal(x @ v.T, covariance_matrix=covariance, validate_args=False)

    def expected_elbo(self, x: Tensor) -> Tensor:
        """ELBO in closed form, E_q[log p(x|z)] - KL(q || p(z)), shape (B,).

        With q = N(m, Sigma): E_q[log N(x; W z, Phi)] = log N(x; W m, Phi) - tr(Phi^-1 W Sigma W^T) / 2.
        """
        q = self.inference(x)
        w, noise_std = self.generative.weight, self.generative.noise_std
        trace = ((w @ self.inference.scale_tril / noise_std[:, None]) ** 2).sum()  # Sigma = C C^T is shared by all x
        expected_log_likelihood = self.generative(q.mean).log_prob(x) - trace / 2
        return expected_log_likelihood - kl_divergence(q, self.p_z())

    @torch.no_grad()
    def e_step(self) -> None:
        """Exact E-step: set q(z|x) to p(z|x), i.e. V := V*, C C^T := Sigma*.

        A diagonal family gets the KL-optimal diagonal, C = diag(Sigma*^-1)^-1/2.
        """
        v, covariance = self.posterior_parameters()
        self.inference.weight.copy_(v)
        if self.inference.full:
            scale_tril = torch.linalg.cholesky(covariance)
            self.inference.raw_scale.copy_(scale_tril.tril(-1) + torch.diag(inverse_softplus(scale_tril.diagonal())))
        else:  # argmin_diag KL(q || p) has precision diag(Sigma*^-1)
            self.inference.raw_scale.copy_(inverse_softplus(torch.linalg.inv(covariance).diagonal().rsqrt()))

    @torch.no_grad()
    def m_step(self, x: Tensor) -> None:
        """Exact M-step: W, Phi maximizing the mean ELBO over x (N, D) with q(z|x) = N(V x, Sigma) fixed.

        With S = X^T X / N and A = Sigma + V S V^T (the mean E_q[z z^T]):
        W = S V^T A^-1 and Phi = max(diag(S - 2 W V S + W A W^T), NOISE_VAR_FLOOR * tr(S) / D).
        The floor keeps Phi invertible when a column is constant (see NOISE_VAR_FLOOR); for all-zero data,
        where tr(S) = 0, it is the dtype's smallest normal number.
        """
        v, scale_tril = self.inference.weight, self.inference.scale_tril
        sigma = scale_tril @ scale_tril.T
        s = x.T @ x / x.shape[0]  # (D, D)
        a = sigma + v @ s @ v.T  # (L, L)
        w = torch.linalg.solve(a, v @ s).T  # (D, L)
        floor = (NOISE_VAR_FLOOR * s.diagonal().mean()).clamp_min(torch.finfo(s.dtype).tiny)
        noise_var = torch.maximum((s - 2 * w @ v @ s + w @ a @ w.T).diagonal(), floor)
        self.generative.weight.copy_(w)
        self.generative.raw_noise_std.copy_(inverse_softplus(noise_var.sqrt()))


def fit_em(x: Tensor, latent_dim: int, max_iter: int = 10_000, tol: float = 1e-9, seed: int = 0) -> FactorAnalysis:
    """Maximum-likelihood factor analysis of zero-mean data x (N, D) by exact EM, in float64 on x's device.

    Starts from the constructor's W ~ N(0, I) drawn with ``seed`` and Phi = I, then alternates ``e_step`` and
    ``m_step`` until the mean log-likelihood (1/N) sum_n log N(x_n; 0, W W^T + Phi) rises by less than ``tol``.
    The result depends on the arguments alone, and the caller's global random state is left as it was.
    """
    x = x.to(torch.float64)
    # The constructor draws from the global generator: build on the CPU, inside a fork of the CPU generator only,
    # and seed that generator alone (torch.manual_seed would also reseed every GPU's, which the fork does not restore).
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.default_generator.manual_seed(seed)
        model = FactorAnalysis(FAConfig(x.shape[1], latent_dim))
    model = model.to(device=x.device, dtype=torch.float64)
    previous = -float("inf")
    for _ in range(max_iter):
        model.e_step()
        model.m_step(x)
        current = model.log_evidence(x).mean().item()
        if current - previous < tol:
            break
        previous = current
    model.e_step()
    return model


def tutorial_model(dtype: torch.dtype = torch.float32) -> FactorAnalysis:
    """The tutorial's true FA model (L = 2, D = 3), with its exact posterior as q."""
    model = FactorAnalysis(FAConfig(3, 2)).to(dtype)
    with torch.no_grad():
        model.generative.weight.copy_(torch.tensor(TUTORIAL_W))
        model.generative.raw_noise_std.copy_(inverse_softplus(torch.tensor(TUTORIAL_NOISE_STD)))
    model.e_step()
    return model


def synthetic_data(num_train: int = 1000, num_test: int = 1000, seed: int = 0) -> tuple[FactorAnalysis, Tensor, Tensor]:
    """(true model, x_train (N, 3), x_test (M, 3)) drawn from the tutorial's FA model, seeded by ``seed`` (the
    caller's global random state is left as it was)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.default_generator.manual_seed(seed)
        true_model = tutorial_model()
        x = true_model.sample(num_train + num_test)
    return true_model, x[:num_train], x[num_train:]
