"""Latent-variable regression: factor analysis of x given covariates c (e.g. a response shaped by known
conditions), a model with a context that is not a class label.

Generative model (theta = W, B, b, psi):
    z ~ N(0, I_L),    x | z, c ~ N(W z + B c + b, diag(psi)),    W in R^{D x L}, B in R^{D x K},
so the conditional evidence is exact, x | c ~ N(B c + b, W W^T + diag(psi)), and so is the posterior,
    p(z | x, c) = N(M^-1 W^T Psi^-1 (x - B c - b), M^-1),    M = I_L + W^T Psi^-1 W.
Variational family (phi = V, U, v, S): q(z | x, c) = N(V x + U c + v, S S^T), S lower-triangular and shared by
all (x, c): it contains the exact posterior, so the ELBO's maximum is the maximum likelihood.

From the command line its data come from an .npz holding x (N, D) and c (N, K), and x_test, c_test:

    aevb fit --model examples/latent_regression.py:LatentRegression --dataset data.npz --covariate-dim K

`python examples/latent_regression.py` simulates such data, fits it, and compares the fit's exact test
log p(x | c) and its B with the true model's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal

from aevb.errors import DataError
from aevb.fitting import Data, Hooks
from aevb.model import LatentVariableModel
from aevb.trainer import Trainer


class CovariateData(Hooks):
    """The data: x and its covariates c from the .npz that --dataset names (x, c, x_test, c_test)."""

    iwae = 50  # importance samples of the summary's bound: beside the exact evidence, a few show how close it is

    def data(self) -> Data:
        path, width = Path(self.args.dataset), self.args.config_covariate_dim
        if path.suffix != ".npz":
            raise DataError(f"--dataset {path}: name an .npz holding x, c, x_test and c_test (numpy.savez)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: torch.as_tensor(npz[k], dtype=torch.float32) for k in ("x", "c", "x_test", "c_test")}
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: cannot read x, c, x_test and c_test from it ({e}); save them with numpy.savez")
        for x, c in (("x", "c"), ("x_test", "c_test")):
            if arrays[x].dim() != 2 or arrays[c].shape != (len(arrays[x]), width):
                raise DataError(f"{path}: {x} has shape {tuple(arrays[x].shape)} and {c} {tuple(arrays[c].shape)}; "
                                f"expected (N, D) and (N, {width}), --covariate-dim {width}")
        if not all(torch.isfinite(a).all() for a in arrays.values()):
            raise DataError(f"{path}: the arrays contain NaN or infinite values; remove or impute them first")
        return Data(train=(arrays["x"], arrays["c"]), test=(arrays["x_test"], arrays["c_test"]), y_test=None,
                    shape=(arrays["x"].shape[1],), kind="vectors")


@dataclass
class LatentRegressionConfig:
    data_dim: int = field(default=8, metadata={"help": "D, the dimension of x (set from the data)"})
    covariate_dim: int = field(default=2, metadata={"help": "K, the number of covariates in c"})
    latent_dim: int = field(default=2, metadata={"help": "L, the number of latent factors"})


class LinearGaussianGivenCovariates(nn.Module):
    """p_theta(x | z, c) = N(W z + B c + b, diag(psi)), psi = exp(log_noise_var)."""

    def __init__(self, config: LatentRegressionConfig) -> None:
        super().__init__()
        self.factor_loadings = nn.Parameter(torch.randn(config.data_dim, config.latent_dim))  # W
        self.coefficients = nn.Parameter(torch.zeros(config.data_dim, config.covariate_dim))  # B
        self.loc = nn.Parameter(torch.zeros(config.data_dim))  # b
        self.log_noise_var = nn.Parameter(torch.zeros(config.data_dim))

    def mean_given_covariates(self, c: Tensor) -> Tensor:
        """B c + b, (..., D)."""
        return c @ self.coefficients.T + self.loc

    def forward(self, z: Tensor, c: Tensor) -> Independent:
        loc = z @ self.factor_loadings.T + self.mean_given_covariates(c)  # (..., D)
        return Independent(Normal(loc, (self.log_noise_var / 2).exp().expand(loc.shape)), 1)


class LinearGaussianPosterior(nn.Module):
    """q_phi(z | x, c) = N(V x + U c + v, S S^T), S lower-triangular with diagonal exp(.) of its raw diagonal."""

    def __init__(self, config: LatentRegressionConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.data_dim + config.covariate_dim, config.latent_dim)  # [V U], v
        self.raw_scale_tril = nn.Parameter(torch.zeros(config.latent_dim, config.latent_dim))

    def forward(self, x: Tensor, c: Tensor) -> MultivariateNormal:
        scale_tril = self.raw_scale_tril.tril(-1) + torch.diag_embed(self.raw_scale_tril.diagonal().exp())
        return MultivariateNormal(self.linear(torch.cat([x, c], dim=-1)), scale_tril=scale_tril)


class LatentRegression(LatentVariableModel):
    """Factor analysis of x given covariates c, with an amortized linear-Gaussian q(z | x, c)."""

    Config = LatentRegressionConfig
    hooks = CovariateData

    def __init__(self, config: LatentRegressionConfig = LatentRegressionConfig()) -> None:
        super().__init__(config)
        self.generative = LinearGaussianGivenCovariates(config)
        self.inference = LinearGaussianPosterior(config)

    def p_z(self) -> MultivariateNormal:
        """p(z) = N(0, I_L), batch shape ()."""
        zeros = self.generative.loc.new_zeros(self.config.latent_dim)
        return MultivariateNormal(zeros, scale_tril=torch.diag_embed(torch.ones_like(zeros)))

    def factors(self, x: Tensor, c: Tensor):
        return self.inference(x, c), self.p_z(), lambda z: self.generative(z, c)

    def sample(self, num_samples: int, c: Tensor) -> Tensor:
        """x ~ p(x | c) for each of the ``num_samples`` rows of c (N, K): (N, D)."""
        return self.generative(self.p_z().sample((num_samples,)), c).sample()

    def log_evidence(self, x: Tensor, c: Tensor) -> Tensor:
        """Exact log p(x | c) = log N(x; B c + b, W W^T + diag(psi)), shape (B,)."""
        w = self.generative.factor_loadings
        covariance = w @ w.T + torch.diag_embed(self.generative.log_noise_var.exp())
        return MultivariateNormal(self.generative.mean_given_covariates(c), covariance_matrix=covariance).log_prob(x)


def simulate(num_examples: int, config: LatentRegressionConfig = LatentRegressionConfig(),
             seed: int = 0) -> tuple[Tensor, Tensor, LatentRegression]:
    """(x (N, D), c (N, K), the true model) with c, W, B, b ~ N(0, 1) entrywise and psi = 0.25."""
    torch.manual_seed(seed)
    model = LatentRegression(config)
    with torch.no_grad():
        for parameter in (model.generative.factor_loadings, model.generative.coefficients, model.generative.loc):
            parameter.normal_()
        model.generative.log_noise_var.fill_(np.log(0.25))
        c = torch.randn(num_examples, config.covariate_dim)
        x = model.sample(num_examples, c)
    return x, c, model


def fit(model: LatentRegression, x: Tensor, c: Tensor, epochs: int = 60, seed: int = 0) -> LatentRegression:
    """AEVB on the batches (x, c): Adam at lr 1e-2, batches of 100."""
    Trainer(model, lr=1e-2, batch_size=100, seed=seed, progress=False).fit((x, c), epochs=epochs)
    return model


def main() -> None:
    torch.set_num_threads(1)  # small matrices: more threads only add synchronization
    config = LatentRegressionConfig()
    x, c, true_model = simulate(4000, config, seed=0)
    model = fit(LatentRegression(config), x[:2000], c[:2000])
    with torch.no_grad():
        fitted, true = (m.log_evidence(x[2000:], c[2000:]).mean().item() for m in (model, true_model))
        error = (model.generative.coefficients - true_model.generative.coefficients).abs().max().item()
    print(f"exact test log p(x | c) (nats/example): AEVB {fitted:.4f}, true model {true:.4f}; "
          f"largest error in B {error:.3f}")


if __name__ == "__main__":
    main()
