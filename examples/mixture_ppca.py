"""Mixture of probabilistic PCAs (Tipping & Bishop 1999, "Mixtures of probabilistic principal component
analyzers", Neural Computation 11(2)), the discrete component summed out of the ELBO exactly.

Generative model (theta = pi, W_k, mu_k, sigma_k for k = 1..K):
    k ~ Categorical(pi),    z | k ~ N(0, I_L),    x | z, k ~ N(W_k z + mu_k, sigma_k^2 I_D),
so the evidence is exact: p(x) = sum_k pi_k N(x; mu_k, W_k W_k^T + sigma_k^2 I).
Variational family (phi): q(k, z | x) = q(k | x) q(z | x, k), with q(k | x) = Categorical(softmax(MLP(x)))
and q(z | x, k) = N(V_k x + v_k, S_k S_k^T), the family of the exact p(z | x, k).

ELBO, the sum over k exact and one reparameterized draw z_k ~ q(z | x, k) per component:
    ELBO(x) = sum_k q(k|x) [E_q(z|x,k) log p(x | z, k) - KL(q(z|x,k) || p(z))] - KL(q(k|x) || p(k)).
Importance weights, two kinds, each with E[w] = p(x), so that log (1/S) sum_s w_s is a lower bound on
log p(x) rising with S (Burda et al. 2016, Thm. 1):
* ``log_importance_weights`` (the contract's, the bound ``iwae_bound``): (k_s, z_s) ~ q(k|x) q(z|x,k),
      w_s = pi_k p(z_s) p(x | z_s, k) / (q(k|x) q(z_s | x, k)),
  so E log w_1 = ELBO(x) (``aevb.testing.check_model`` holds every model to IWAE(1) = ELBO in expectation);
* ``stratified_iwae_bound``, k summed out: z_{s,k} ~ q(z | x, k) for every k,
      w_s = sum_k pi_k p(z_{s,k}) p(x | z_{s,k}, k) / q(z_{s,k} | x, k).
  Term k has expectation pi_k p(x | k), so E[w_s] = p(x); and by Jensen with weights q(k|x),
  log w_s >= sum_k q(k|x) log(pi_k p(z_{s,k}) p(x | z_{s,k}, k) / (q(k|x) q(z_{s,k} | x, k))), whose
  expectation is ELBO(x): this bound is at least the ELBO already at S = 1, and q(k|x) drops out of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.distributions import (Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal,
                                 kl_divergence)

from aevb import elbo as estimators
from aevb.fitting import Hooks
from aevb.model import LatentVariableModel
from aevb.trainer import Trainer


@dataclass
class MixturePPCAConfig:
    data_dim: int = field(default=6, metadata={"help": "D, the dimension of one example (set from the data)"})
    latent_dim: int = field(default=2, metadata={"help": "L, the dimension of each component's latent z"})
    num_components: int = field(default=3, metadata={"help": "K, the number of PPCA components"})
    hidden: int = field(default=64, metadata={"help": "width of the hidden layer of q(k | x)'s MLP"})


class MixtureOfLinearGaussians(nn.Module):
    """theta: p(k) = Categorical(logits); p(x | z, k) = N(W_k z + mu_k, sigma_k^2 I), W (K, D, L), mu (K, D)."""

    def __init__(self, c: MixturePPCAConfig) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(c.num_components))
        self.weight = nn.Parameter(0.1 * torch.randn(c.num_components, c.data_dim, c.latent_dim))
        self.loc = nn.Parameter(torch.randn(c.num_components, c.data_dim))
        self.log_noise_std = nn.Parameter(torch.zeros(c.num_components))

    def p_k(self) -> Categorical:
        return Categorical(logits=self.logits, validate_args=False)

    def p_x_given_z(self, z: Tensor) -> Independent:
        """p(x | z, k) for z (..., K, B, L), component k on dim -3: batch (..., K, B), event (D,)."""
        loc = torch.einsum("kdl,...kbl->...kbd", self.weight, z) + self.loc[:, None]  # (..., K, B, D)
        scale = self.log_noise_std.exp()[:, None, None].expand(loc.shape)
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


class MixturePosterior(nn.Module):
    """phi: q(k | x) from an MLP; q(z | x, k) = N(V_k x + v_k, S_k S_k^T), V (K, L, D), S_k lower-triangular."""

    def __init__(self, c: MixturePPCAConfig) -> None:
        super().__init__()
        self.logits = nn.Sequential(nn.Linear(c.data_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.num_components))
        self.weight = nn.Parameter(0.1 * torch.randn(c.num_components, c.latent_dim, c.data_dim) / c.data_dim**0.5)
        self.bias = nn.Parameter(torch.zeros(c.num_components, c.latent_dim))
        self.raw_scale_tril = nn.Parameter(torch.zeros(c.num_components, c.latent_dim, c.latent_dim))

    def q_k(self, x: Tensor) -> Categorical:
        return Categorical(logits=self.logits(x), validate_args=False)  # batch (B,)

    def q_z(self, x: Tensor) -> MultivariateNormal:
        """q(z | x, k) for every k: batch (K, B), event (L,)."""
        loc = torch.einsum("kld,bd->kbl", self.weight, x) + self.bias[:, None]  # (K, B, L)
        diagonal = torch.diag_embed(self.raw_scale_tril.diagonal(dim1=-2, dim2=-1).exp())
        scale_tril = self.raw_scale_tril.tril(-1) + diagonal  # (K, L, L)
        return MultivariateNormal(loc, scale_tril=scale_tril[:, None], validate_args=False)


class MixtureHooks(Hooks):
    """What the mixture adds to ``aevb fit``: its means start at the k-means centres of the training data."""

    def initialize(self, model: "MixturePPCA", data) -> None:
        model.initialize_means(data.train[0], seed=self.args.seed)


class MixturePPCA(LatentVariableModel):
    """Mixture of PPCAs with amortized q(k | x) q(z | x, k); the exact evidence and two importance-weighted bounds."""

    Config = MixturePPCAConfig
    hooks = MixtureHooks
    estimators = estimators.ESTIMATORS  # elbo's KL of z: analytic ("aevb") or sampled ("sgvb")

    def __init__(self, config: MixturePPCAConfig = MixturePPCAConfig()) -> None:
        super().__init__(config)
        self.generative = MixtureOfLinearGaussians(config)
        self.inference = MixturePosterior(config)

    @torch.no_grad()
    def initialize_means(self, x: Tensor, seed: int = 0) -> "MixturePPCA":
        """Set mu_k to the k-means centroids of x (N, D) (k-means++ seeding), the usual start of EM for mixtures:
        from random means, gradient ascent stalls where one component covers two clusters."""
        centroids, _ = kmeans2(x.cpu().double().numpy(), self.config.num_components, minit="++", seed=seed)
        self.generative.loc.copy_(torch.as_tensor(centroids))
        return self

    def p_z(self) -> MultivariateNormal:
        """p(z) = N(0, I_L), batch shape ()."""
        zeros = self.generative.loc.new_zeros(self.config.latent_dim)
        return MultivariateNormal(zeros, scale_tril=torch.diag_embed(torch.ones_like(zeros)), validate_args=False)

    def elbo(self, x: Tensor, estimator: str = "aevb") -> estimators.ELBO:
        """The ELBO of the module docstring, shapes (B,); ``estimator`` picks the KL of z (``aevb.elbo.kl_term``)."""
        q_k, q_z = self.inference.q_k(x), self.inference.q_z(x)
        z = q_z.rsample()  # (K, B, L): one draw per component
        responsibilities = q_k.probs.T  # (K, B)
        log_likelihood = (responsibilities * self.generative.p_x_given_z(z).log_prob(x)).sum(0)
        kl_z = estimators.kl_term(q_z, self.p_z(), z, estimator)  # (K, B)
        kl = (responsibilities * kl_z).sum(0) + kl_divergence(q_k, self.generative.p_k())
        return estimators.ELBO(log_likelihood - kl, log_likelihood, kl)

    def component_log_weights(self, x: Tensor, num_samples: int) -> Tensor:
        """log pi_k + log p(z_sk) + log p(x | z_sk, k) - log q(z_sk | x, k), z_sk ~ q(z|x,k) for every k; (S, K, B)."""
        q_z = self.inference.q_z(x)
        z = q_z.rsample((num_samples,))  # (S, K, B, L)
        log_w = self.generative.p_x_given_z(z).log_prob(x) + self.p_z().log_prob(z) - q_z.log_prob(z)
        return log_w + self.generative.p_k().logits[:, None]

    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        """log w_s at (k_s, z_s) ~ q(k|x) q(z|x,k), shape (S, B). z is drawn for every component and that of k_s
        kept: K times the work of one draw, for one code path shared with the stratified bound."""
        q_k = self.inference.q_k(x)
        k = q_k.sample((num_samples,))  # (S, B)
        log_w = self.component_log_weights(x, num_samples).gather(1, k[:, None]).squeeze(1)  # (S, B)
        return log_w - q_k.log_prob(k)

    def stratified_iwae_bound(self, x: Tensor, num_samples: int, chunk_size: int = 100) -> Tensor:
        """log (1/S) sum_s w_s with k summed out of each w_s (module docstring), shape (B,)."""
        return estimators.iwae_bound(
            lambda s: torch.logsumexp(self.component_log_weights(x, s), dim=1), num_samples, chunk_size
        )

    def sample_with_components(self, num_samples: int) -> tuple[Tensor, Tensor]:
        """(x (N, D), k (N,)) drawn ancestrally: k ~ p(k), z ~ p(z), x ~ p(x | z, k)."""
        k = self.generative.p_k().sample((num_samples,))  # (N,)
        z = self.p_z().sample((num_samples,))  # (N, L)
        x_all = self.generative.p_x_given_z(z.expand(self.config.num_components, -1, -1)).sample()  # (K, N, D)
        return x_all[k, torch.arange(num_samples, device=k.device)], k

    def sample(self, num_samples: int) -> Tensor:
        return self.sample_with_components(num_samples)[0]

    def cluster_probs(self, x: Tensor) -> Tensor:
        """q(k | x), shape (B, K)."""
        return self.inference.q_k(x).probs

    def encode(self, x: Tensor) -> Tensor:
        """E_q[z | x] = sum_k q(k | x) E_q[z | x, k], shape (B, L)."""
        return (self.cluster_probs(x).T[..., None] * self.inference.q_z(x).mean).sum(0)

    def p_x(self) -> MixtureSameFamily:
        """The marginal p(x) = sum_k pi_k N(x; mu_k, W_k W_k^T + sigma_k^2 I)."""
        g = self.generative
        identity = torch.eye(self.config.data_dim, dtype=g.loc.dtype, device=g.loc.device)
        covariance = g.weight @ g.weight.mT + (2 * g.log_noise_std).exp()[:, None, None] * identity  # (K, D, D)
        p_x_given_k = MultivariateNormal(g.loc, covariance_matrix=covariance, validate_args=False)
        return MixtureSameFamily(g.p_k(), p_x_given_k, validate_args=False)

    def log_evidence(self, x: Tensor) -> Tensor:
        """Exact log p(x), shape (B,)."""
        return self.p_x().log_prob(x)


def simulate(num_examples: int, config: MixturePPCAConfig = MixturePPCAConfig(), seed: int = 0,
             separation: float = 4.0, noise_std: float = 0.3) -> tuple[Tensor, Tensor, MixturePPCA]:
    """(x (N, D) float32, components k (N,), the true model): pi uniform, mu_k ~ N(0, separation^2 I),
    W_k ~ N(0, 1) entrywise, sigma_k = ``noise_std``."""
    torch.manual_seed(seed)
    model = MixturePPCA(config)
    with torch.no_grad():
        model.generative.weight.normal_()
        model.generative.loc.normal_(0.0, separation)
        model.generative.log_noise_std.fill_(math.log(noise_std))
        return *model.sample_with_components(num_examples), model


def fit(model: MixturePPCA, x: Tensor, seed: int = 0) -> MixturePPCA:
    """Means from k-means, then Adam at lr 1e-2 for 60 epochs of batches of 100 and at 1e-3 for 20 more."""
    model.initialize_means(x, seed)
    for lr, epochs in ((1e-2, 60), (1e-3, 20)):
        Trainer(model, lr=lr, batch_size=100, seed=seed, progress=False).fit((x,), epochs=epochs)
    return model


def clustering_accuracy(components: Tensor, predicted: Tensor, num_components: int) -> float:
    """The fraction of examples whose predicted cluster is their true component, clusters matched to components
    one-to-one to maximize it (the Hungarian algorithm)."""
    counts = np.zeros((num_components, num_components))  # (true, predicted)
    np.add.at(counts, (components.numpy(), predicted.numpy()), 1)
    rows, columns = linear_sum_assignment(counts, maximize=True)
    return counts[rows, columns].sum() / len(components)


def main() -> None:
    torch.set_num_threads(1)  # small matrices: more threads only add synchronization
    config = MixturePPCAConfig(data_dim=6, latent_dim=2, num_components=3)
    x, components, true_model = simulate(6000, config, seed=0)
    x_train, x_test = x[:4000], x[4000:]
    model = fit(MixturePPCA(config), x_train)
    with torch.no_grad():
        accuracy = clustering_accuracy(components[4000:], model.cluster_probs(x_test).argmax(1), 3)
        elbo = model.elbo(x_test).elbo.mean().item()
        iwae = {k: model.iwae_bound(x_test, num_samples=k).mean().item() for k in (1, 100)}
        stratified = {k: model.stratified_iwae_bound(x_test, num_samples=k).mean().item() for k in (1, 100)}
        fitted, true = (m.log_evidence(x_test).mean().item() for m in (model, true_model))
    print(f"clustering accuracy of argmax q(k|x), components matched: {accuracy:.4f}")
    print(f"test bounds (nats/example): ELBO {elbo:.4f}, " + ", ".join(f"IWAE({k}) {v:.4f}" for k, v in iwae.items())
          + ", " + ", ".join(f"stratified IWAE({k}) {v:.4f}" for k, v in stratified.items())
          + f", exact log p(x) {fitted:.4f}")
    print(f"exact test log-likelihood: fit {fitted:.4f}, true {true:.4f}, fit - true {fitted - true:+.4f}")


if __name__ == "__main__":
    main()
