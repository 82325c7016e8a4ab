"""Probabilistic PCA (Tipping & Bishop 1999, "Probabilistic principal component analysis", JRSS B 61(3)).

Generative model (theta = W, mu, sigma):
    z ~ N(0, I_L),    x | z ~ N(W z + mu, sigma^2 I_D),    W in R^{D x L},
so the evidence is exact, x ~ N(mu, W W^T + sigma^2 I), and so is the posterior,
    p(z | x) = N(M^-1 W^T (x - mu), sigma^2 M^-1),    M = W^T W + sigma^2 I_L.
Variational family (phi = V, v, S): q(z | x) = N(V x + v, S S^T), S lower-triangular and shared by
all x: it contains the exact posterior (V = M^-1 W^T, v = -V mu, S S^T = sigma^2 M^-1), so the ELBO's
maximum is the maximum likelihood. That maximum has a closed form: with the sample
covariance's eigenvalues lambda_1 >= ... >= lambda_D and eigenvectors U,
    mu = mean(x),    sigma^2 = mean(lambda_{L+1..D}),    W = U_L (Lambda_L - sigma^2 I)^{1/2} (up to a rotation),
which ``closed_form_mle`` computes, the reference an AEVB fit is measured against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal

from aevb.model import LatentVariableModel
from aevb.trainer import Trainer


@dataclass
class PPCAConfig:
    data_dim: int = field(default=10, metadata={"help": "D, the dimension of one example (set from the data)"})
    latent_dim: int = field(default=2, metadata={"help": "L, the number of principal components kept"})


class IsotropicLinearGaussian(nn.Module):
    """p_theta(x | z) = N(W z + mu, sigma^2 I): weight W (D, L), loc mu (D,), sigma = exp(log_noise_std)."""

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(data_dim, latent_dim))
        self.loc = nn.Parameter(torch.zeros(data_dim))
        self.log_noise_std = nn.Parameter(torch.zeros(()))

    @property
    def noise_var(self) -> Tensor:
        """sigma^2, 0-dim."""
        return (2 * self.log_noise_std).exp()

    def forward(self, z: Tensor) -> Independent:
        loc = z @ self.weight.T + self.loc  # (..., D)
        return Independent(Normal(loc, self.log_noise_std.exp().expand(loc.shape), validate_args=False), 1,
                           validate_args=False)


class LinearGaussianPosterior(nn.Module):
    """q_phi(z | x) = N(V x + v, S S^T), S lower-triangular with diagonal exp(.) of its raw diagonal."""

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__()
        # V starts small, so q starts near the prior's mean.
        self.weight = nn.Parameter(0.1 * torch.randn(latent_dim, data_dim) / data_dim**0.5)  # V
        self.bias = nn.Parameter(torch.zeros(latent_dim))  # v
        self.raw_scale_tril = nn.Parameter(torch.zeros(latent_dim, latent_dim))

    @property
    def scale_tril(self) -> Tensor:
        """S, (L, L)."""
        return self.raw_scale_tril.tril(-1) + torch.diag_embed(self.raw_scale_tril.diagonal().exp())

    def forward(self, x: Tensor) -> MultivariateNormal:
        return MultivariateNormal(x @ self.weight.T + self.bias, scale_tril=self.scale_tril, validate_args=False)


class PPCA(LatentVariableModel):
    """Probabilistic PCA with an amortized linear-Gaussian posterior, and its exact evidence and E-step."""

    Config = PPCAConfig

    def __init__(self, config: PPCAConfig = PPCAConfig()) -> None:
        if not 1 <= config.latent_dim < config.data_dim:
            raise ValueError(f"latent dimension {config.latent_dim} must be in 1..{config.data_dim - 1}")
        super().__init__(config)
        self.generative = IsotropicLinearGaussian(config.data_dim, config.latent_dim)
        self.inference = LinearGaussianPosterior(config.data_dim, config.latent_dim)

    def p_z(self) -> MultivariateNormal:
        """p(z) = N(0, I_L), batch shape ()."""
        zeros = self.generative.loc.new_zeros(self.config.latent_dim)
        return MultivariateNormal(zeros, scale_tril=torch.diag_embed(torch.ones_like(zeros)), validate_args=False)

    def factors(self, x: Tensor):
        return self.inference(x), self.p_z(), self.generative

    def sample(self, num_samples: int) -> Tensor:
        return self.generative(self.p_z().sample((num_samples,))).sample()  # (N, D)

    def p_x(self) -> MultivariateNormal:
        """The marginal p(x) = N(mu, W W^T + sigma^2 I)."""
        w, noise_var = self.generative.weight, self.generative.noise_var
        covariance = w @ w.T + noise_var * torch.eye(self.config.data_dim, dtype=w.dtype, device=w.device)
        return MultivariateNormal(self.generative.loc, covariance_matrix=covariance, validate_args=False)

    def log_evidence(self, x: Tensor) -> Tensor:
        """Exact log p(x), shape (B,)."""
        return self.p_x().log_prob(x)

    @torch.no_grad()
    def e_step(self) -> None:
        """Exact E-step, q(z | x) := p(z | x): V = M^-1 W^T, v = -V mu, S = cholesky(sigma^2 M^-1)."""
        w, loc, noise_var = self.generative.weight, self.generative.loc, self.generative.noise_var
        m = w.T @ w + noise_var * torch.eye(self.config.latent_dim, dtype=w.dtype, device=w.device)
        v = torch.linalg.solve(m, w.T)
        scale_tril = torch.linalg.cholesky(noise_var * torch.linalg.inv(m))
        self.inference.weight.copy_(v)
        self.inference.bias.copy_(-v @ loc)
        self.inference.raw_scale_tril.copy_(scale_tril.tril(-1) + torch.diag_embed(scale_tril.diagonal().log()))


def closed_form_mle(x: Tensor, latent_dim: int) -> PPCA:
    """The maximum-likelihood PPCA of x (N, D) (module docstring), with q := p(z|x): the eigendecomposition in
    float64, the model in x's dtype."""
    x64 = x.double()
    loc = x64.mean(0)
    covariance = (x64 - loc).T @ (x64 - loc) / len(x64)  # the MLE's 1/N sample covariance
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    noise_var = eigenvalues[latent_dim:].mean()
    model = PPCA(PPCAConfig(x.shape[1], latent_dim)).to(x.dtype)
    with torch.no_grad():
        model.generative.weight.copy_(eigenvectors[:, :latent_dim] * (eigenvalues[:latent_dim] - noise_var).sqrt())
        model.generative.loc.copy_(loc)
        model.generative.log_noise_std.copy_(noise_var.log() / 2)
    model.e_step()
    return model


def simulate(num_examples: int, config: PPCAConfig = PPCAConfig(), seed: int = 0,
             noise_std: float = 0.5) -> tuple[Tensor, PPCA]:
    """(x (N, D) float32, the true model) with W_dl ~ N(0, 1), mu_d ~ N(0, 1) and sigma = ``noise_std``."""
    torch.manual_seed(seed)
    model = PPCA(config)
    with torch.no_grad():
        model.generative.weight.normal_()
        model.generative.loc.normal_()
        model.generative.log_noise_std.fill_(math.log(noise_std))
        x = model.sample(num_examples)
    model.e_step()
    return x, model


def fit(model: PPCA, x: Tensor, seed: int = 0) -> PPCA:
    """AEVB: Adam at lr 1e-2 for 60 epochs of batches of 100, then at 1e-3 for 20 more to settle the noise.

    The last hundredths of a nat come slowly: the log-likelihood is nearly flat in the length of W's leading
    column (curvature about 2 / lambda_1, lambda_1 the sample covariance's largest eigenvalue), and the one-sample
    ELBO gradient along it is mostly noise, so with 2000 examples it takes these ~1600 steps to come within
    0.01 nats of ``closed_form_mle``.
    """
    for lr, epochs in ((1e-2, 60), (1e-3, 20)):
        Trainer(model, lr=lr, batch_size=100, seed=seed, progress=False).fit((x,), epochs=epochs)
    return model


def main() -> None:
    torch.set_num_threads(1)  # small matrices: more threads only add synchronization
    config = PPCAConfig(data_dim=10, latent_dim=2)
    x, true_model = simulate(4000, config, seed=0)
    x_train, x_test = x[:2000], x[2000:]
    model = fit(PPCA(config), x_train)
    reference = closed_form_mle(x_train, config.latent_dim)
    with torch.no_grad():
        fitted, mle, true = (m.log_evidence(x_test).mean().item() for m in (model, reference, true_model))
    print(f"exact test log-likelihood (nats/example): AEVB {fitted:.4f}, closed-form MLE {mle:.4f}, "
          f"true {true:.4f}; AEVB - MLE {fitted - mle:+.4f}")


if __name__ == "__main__":
    main()
