"""aevb.testing.check_model: a small model written against the public contract passes, and each way of breaking the
contract fails with a message that names the broken property. (Every built-in model passes it: test_models.py.)"""
from dataclasses import asdict, dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (Gamma, Independent, LogNormal, Normal, OneHotCategorical,
                                 RelaxedOneHotCategorical, kl_divergence)

from aevb.elbo import ELBO
from aevb.model import LatentVariableModel
from aevb.testing import CHECKS, ModelCheckError, check_model

B = 6
X = torch.randn(B, 4, generator=torch.Generator().manual_seed(1))


@dataclass
class ToyConfig:
    data_dim: int = 4
    latent_dim: int = 2


def normal(loc: Tensor, scale: Tensor) -> Independent:
    return Independent(Normal(loc, scale), 1)


class Encoder(nn.Module):
    """q_phi(z | x) = N(loc(x), diag(softplus(raw_scale(x))^2)), loc and raw_scale linear in x."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.net = nn.Linear(config.data_dim, 2 * config.latent_dim)

    def forward(self, x: Tensor) -> Independent:
        loc, raw_scale = self.net(x).chunk(2, dim=-1)
        return normal(loc, F.softplus(raw_scale))


class Decoder(nn.Module):
    """p_theta(x | z) = N(mlp(z), I)."""

    def __init__(self, config: ToyConfig, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(config.latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, config.data_dim))

    def forward(self, z: Tensor) -> Independent:
        loc = self.net(z)
        return normal(loc, torch.ones_like(loc))


class Toy(LatentVariableModel):
    """z ~ N(0, I), x | z ~ N(mlp(z), I); q(z | x) diagonal Gaussian, linear in x."""

    Config = ToyConfig

    def __init__(self, config: ToyConfig = ToyConfig()) -> None:
        super().__init__(config)
        self.generative = Decoder(config)
        self.inference = Encoder(config)

    def p_z(self) -> Independent:
        zeros = torch.zeros(self.config.latent_dim)
        return normal(zeros, torch.ones_like(zeros))

    def factors(self, x: Tensor):
        return self.inference(x), self.p_z(), self.generative

    def sample(self, num_samples: int) -> Tensor:
        return self.generative(self.p_z().sample((num_samples,))).sample()

    def encode(self, x: Tensor) -> Tensor:
        return self.inference(x).mean


class HandWritten(Toy):
    """The ELBO written out, as a user might: log p(x | z) - KL(q || p) at one draw z ~ q(z | x)."""

    def draw(self, q_z: Independent) -> Tensor:
        return q_z.rsample()

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        q_z, p_z, p_x_given_z = self.factors(x)
        return p_x_given_z(self.draw(q_z)).log_prob(x), kl_divergence(q_z, p_z)

    def elbo(self, x: Tensor, estimator: str = "aevb") -> ELBO:
        log_likelihood, kl = self.terms(x)
        return ELBO(log_likelihood - kl, log_likelihood, kl)


# Broken models, one broken property each --------------------------------------------------------------------------
@dataclass
class TupleConfig(ToyConfig):
    widths: tuple = (8,)  # JSON gives a list back, and nothing converts it


class TupleConfigToy(Toy):
    Config = TupleConfig


def dict_config() -> Toy:
    model = Toy()
    model.config = asdict(model.config)
    return model


class StrayParameter(Toy):
    """A learned prior mean registered on the model itself, in neither group."""

    def __init__(self, config: ToyConfig = ToyConfig()) -> None:
        super().__init__(config)
        self.prior_loc = nn.Parameter(torch.zeros(config.latent_dim))

    def p_z(self) -> Independent:
        return normal(self.prior_loc, torch.ones_like(self.prior_loc))


class NaNInitialized(Toy):
    """A decoder bias NaN from the start, as a faulty initialization formula leaves it."""

    def __init__(self, config: ToyConfig = ToyConfig()) -> None:
        super().__init__(config)
        nn.init.constant_(self.generative.net[0].bias, float("nan"))


class SharedLayer(Toy):
    """The encoder reuses the decoder's first layer: its parameters are in both groups."""

    def __init__(self, config: ToyConfig = ToyConfig()) -> None:
        super().__init__(config)
        self.inference.shared = self.generative.net[0]


class UnusedParameter(Toy):
    """A generative layer that the ELBO never uses."""

    def __init__(self, config: ToyConfig = ToyConfig()) -> None:
        super().__init__(config)
        self.generative.spare = nn.Linear(2, 2)


class PerCoordinateLikelihood(Toy):
    """p(x|z) a Normal per pixel, not wrapped in Independent: its log_prob is (B, D), not one number per example."""

    def factors(self, x: Tensor):
        return self.inference(x), self.p_z(), lambda z: self.generative(z).base_dist


class KLAdded(HandWritten):
    def elbo(self, x: Tensor, estimator: str = "aevb") -> ELBO:
        log_likelihood, kl = self.terms(x)
        return ELBO(log_likelihood + kl, log_likelihood, kl)


class KLNegated(HandWritten):
    def elbo(self, x: Tensor, estimator: str = "aevb") -> ELBO:
        log_likelihood, kl = self.terms(x)
        return ELBO(log_likelihood + kl, log_likelihood, -kl)


class DrawnWithSample(HandWritten):
    def draw(self, q_z: Independent) -> Tensor:
        return q_z.sample()


class NormalizedDecoder(Toy):
    """A BatchNorm in the decoder: training updates its running statistics, generative buffers, in an E-step."""

    def __init__(self, config: ToyConfig = ToyConfig()) -> None:
        super().__init__(config)
        self.generative.net.insert(1, nn.BatchNorm1d(8))


class WeightsWithoutPrior(Toy):
    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        q_z, _, p_x_given_z = self.factors(x)
        z = q_z.rsample((num_samples,))
        return p_x_given_z(z).log_prob(x) - q_z.log_prob(z)  # log p(z) forgotten


class WeightsTransposed(Toy):
    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        return super().log_importance_weights(x, num_samples=num_samples).T  # (B, K)


class WeightsNotFinite(Toy):
    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        log_weights = super().log_importance_weights(x, num_samples=num_samples)
        return torch.cat([log_weights[:-1], torch.full_like(log_weights[-1:], float("nan"))])  # a draw lost


class TwoFactors(Toy):
    def factors(self, x: Tensor):
        return self.inference(x), self.p_z()  # p(x|z) forgotten


class NumberPerExample(Toy):
    def encode(self, x: Tensor) -> Tensor:
        return self.inference(x).mean.sum(-1)  # (B,), not a code (B, L)


class SamplesLatents(Toy):
    def sample(self, num_samples: int) -> Tensor:
        return self.p_z().sample((num_samples,))  # z, not x


class DiscreteLatent(Toy):
    """q(z|x) one-hot categorical: no reparameterized draw."""

    def factors(self, x: Tensor):
        logits = self.inference.net(x)[:, :self.config.latent_dim]
        return (OneHotCategorical(logits=logits), OneHotCategorical(logits=torch.zeros(self.config.latent_dim)),
                self.generative)


class RelaxedLatent(Toy):
    """q(z|x) a relaxed one-hot categorical, whose mean torch does not give."""

    def factors(self, x: Tensor):
        logits = self.inference.net(x)[:, :self.config.latent_dim]
        prior = RelaxedOneHotCategorical(torch.tensor(0.5), logits=torch.zeros(self.config.latent_dim))
        return RelaxedOneHotCategorical(torch.tensor(0.5), logits=logits), prior, self.generative

    encode = LatentVariableModel.encode


BROKEN = {
    "config-through-json": (lambda: TupleConfigToy(TupleConfig()), r"^config: .* comes back as .*widths=\[8\]"),
    "config-not-an-instance": (dict_config, r"^config: model.config is a dict; expected a ToyConfig"),
    "parameter-in-neither-group": (StrayParameter, r"^parameter groups: prior_loc in neither group"),
    "parameter-not-finite": (NaNInitialized, r"^parameter groups: generative.net.0.bias holds NaN or infinite values"),
    "parameter-in-both-groups": (SharedLayer, r"^parameter groups: generative.net.0.weight, .* in both groups"),
    "parameter-outside-the-elbo": (UnusedParameter, r"^gradients: .* reaches generative.spare.weight, "
                                                     r"generative.spare.bias;"),
    "likelihood-without-independent": (PerCoordinateLikelihood, r"^elbo terms: factors' p\(x\|z\) has batch shape "
                                                                r"\(6, 4\) and event shape \(\); expected batch shape "
                                                                r"\(6,\): wrap .* in Independent\(\.\.\., 1\)"),
    "kl-added": (KLAdded, r"^elbo terms: elbo differs from log_likelihood - kl"),
    "kl-negated": (KLNegated, r"^kl: kl is negative for 6 of 6 examples"),
    "z-drawn-with-sample": (DrawnWithSample, r"^reparameterization: the log-likelihood term does not reach any "
                                             r"inference \(phi\) parameter .*rsample\(\), not sample\(\)"),
    "buffer-updated-in-an-e-step": (
        NormalizedDecoder, r"^isolation: two steps with schedule 'e-step' changed model.generative's "
                           r"net.1.num_batches_tracked, net.1.running_mean, net.1.running_var;"),
    "importance-weights-without-the-prior": (WeightsWithoutPrior, r"^iwae: over 200 draws log_importance_weights\(num_samples=1\)"),
    "importance-weights-transposed": (WeightsTransposed, r"^importance weights: log_importance_weights\(num_samples=20\) "
                                                         r"has shape \(6, 20\); expected shape \(20, 6\)"),
    "importance-weights-not-finite": (WeightsNotFinite, r"^importance weights: .* has 6 non-finite values"),
    "factors-without-the-likelihood": (TwoFactors, r"^elbo terms: factors\(\) returned 2 things; expected three"),
    "code-a-number-per-example": (NumberPerExample, r"^encode: encode\(\*batch\) has shape \(6,\); expected shape "
                                                    r"\(6, L\)"),
    "sample-of-z": (SamplesLatents, r"^sample: sample\(6\) has shape \(6, 2\); expected shape \(6, 4\)"),
    "discrete-latent": (DiscreteLatent, r"^elbo terms: TypeError: q\(z\|x\) is a OneHotCategorical, which has no "
                                        r"reparameterized sample \(rsample\) for AEVB: use a relaxation"),
    "no-mean-to-encode": (RelaxedLatent, r"^encode: NotImplementedError: RelaxedLatent's q\(z\|x\), a "
                                         r"RelaxedOneHotCategorical, has no mean: define encode\(\)"),
}


def test_a_model_written_against_the_contract_passes_every_check():
    for cls in (Toy, HandWritten):
        torch.manual_seed(0)
        assert check_model(cls(), (X,)) == {name: "passed" for name in CHECKS}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_contract_fails_with_a_message_naming_the_property(name):
    build, message = BROKEN[name]
    torch.manual_seed(0)
    with pytest.raises(ModelCheckError, match=message) as failure:
        check_model(build(), (X,))
    assert isinstance(failure.value, AssertionError) and str(failure.value).startswith(failure.value.check)


def test_an_error_the_model_raises_is_reported_as_the_check_it_broke():
    with pytest.raises(ModelCheckError, match=r"^elbo terms: TypeError: .*factors\(\) takes 2 positional arguments"):
        check_model(Toy(), (X, torch.zeros(B, dtype=torch.long)))  # a label that Toy does not take


def test_a_model_without_config_cannot_be_built():
    class Unconfigured(LatentVariableModel):
        def sample(self, num_samples: int) -> Tensor: ...

        def encode(self, x: Tensor) -> Tensor: ...

    with pytest.raises(TypeError, match="Unconfigured must declare Config"):
        Unconfigured(ToyConfig())


def test_a_posterior_without_parameters_skips_the_checks_that_need_them():
    class PriorAsPosterior(Toy):
        """q(z | x) = p(z): q has no parameters."""

        def __init__(self, config: ToyConfig = ToyConfig()) -> None:
            super().__init__(config)
            self.inference = nn.Module()

        def factors(self, x: Tensor):
            p_z = self.p_z().expand((len(x),))
            return p_z, p_z, self.generative

        def encode(self, x: Tensor) -> Tensor:
            return torch.zeros(len(x), self.config.latent_dim)

    report = check_model(PriorAsPosterior(), X)
    skipped = {name for name, outcome in report.items() if outcome.startswith("skipped")}
    assert list(report) == list(CHECKS) and skipped == {"reparameterization", "isolation"}


def test_a_kl_without_closed_form_is_sampled_and_its_sign_not_checked():
    class GammaPrior(Toy):
        """z ~ Gamma(2, 1), q(z | x) LogNormal: torch.distributions has no KL for the pair, so a draw's may be < 0."""

        def factors(self, x: Tensor):
            loc, raw_scale = self.inference.net(x).chunk(2, dim=-1)
            q_z = Independent(LogNormal(loc, F.softplus(raw_scale)), 1)
            p_z = Independent(Gamma(torch.full((self.config.latent_dim,), 2.0), 1.0), 1)
            return q_z, p_z, self.generative

        def sample(self, num_samples: int) -> Tensor:
            return self.generative(Gamma(2.0, 1.0).sample((num_samples, self.config.latent_dim))).sample()

        def encode(self, x: Tensor) -> Tensor:
            return self.factors(x)[0].mean

    torch.manual_seed(0)
    report = check_model(GammaPrior(), X)
    assert report["kl"].startswith("skipped: the KL is sampled") and "No KL" in report["kl"]
    assert {outcome for name, outcome in report.items() if name != "kl"} == {"passed"}


def test_a_hand_written_elbo_with_a_sampled_kl_skips_the_sign_check():
    """A model whose only estimator samples the KL (log q(z) - log p(z) at the draw): a draw's KL may be < 0."""
    class SampledKL(HandWritten):
        estimators = ("sgvb",)

        def terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
            q_z, p_z, p_x_given_z = self.factors(x)
            z = q_z.rsample()
            return p_x_given_z(z).log_prob(x), q_z.log_prob(z) - p_z.log_prob(z)

        def elbo(self, x: Tensor, estimator: str = "sgvb") -> ELBO:
            return super().elbo(x)

    torch.manual_seed(0)
    assert (SampledKL().elbo(X.repeat(20, 1)).kl < 0).any()  # so the sign check would fail it
    report = check_model(SampledKL(), X)
    assert report["kl"] == "skipped: the default estimator, sgvb, samples the KL"
    assert {outcome for name, outcome in report.items() if name != "kl"} == {"passed"}


def test_the_derived_code_of_a_latent_per_step_is_its_posterior_mean_flattened():
    class PerStep(Toy):
        """z of event shape (T, L) = (3, 2), a latent per step; q's mean is the code, T * L numbers."""

        def factors(self, x: Tensor):
            q_z = self.inference(x)
            loc, scale = q_z.mean[:, None].expand(-1, 3, -1), q_z.stddev[:, None].expand(-1, 3, -1)
            zeros = torch.zeros(3, self.config.latent_dim)
            return (Independent(Normal(loc, scale), 2), Independent(Normal(zeros, 1.0), 2),
                    lambda z: self.generative(z.mean(1)))

        encode = LatentVariableModel.encode  # derived from factors

    model = PerStep()
    code = model.encode(X)
    assert code.shape == (B, 6) and torch.equal(code, model.factors(X)[0].mean.flatten(1))
    assert check_model(model, X, checks=["encode"]) == {"encode": "passed"}

    class OneNumber(PerStep):
        def factors(self, x: Tensor):
            q_z, p_z, p_x_given_z = super().factors(x)
            return Normal(q_z.base_dist.loc[:, 0, 0], 1.0), p_z, p_x_given_z  # a mean of shape (B,): not a code

    with pytest.raises(ModelCheckError, match=r"encode\(\*batch\) has shape \(6,\); expected shape \(6, L\)"):
        check_model(OneNumber(), X, checks=["encode"])


def test_checks_runs_the_named_checks_only_in_their_order():
    report = check_model(UnusedParameter(), X, checks=["sample", "config", "encode"])  # the gradients check would fail
    assert list(report) == ["config", "sample", "encode"] and set(report.values()) == {"passed"}
    with pytest.raises(ValueError, match="no check named 'shapes'; the checks are config, parameter groups"):
        check_model(Toy(), X, checks=["shapes"])


def test_the_callers_model_and_random_state_are_left_as_they_were():
    model = NormalizedDecoder().eval()  # its buffers would move in train mode
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(ModelCheckError, match="^isolation"):
        check_model(model, X)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
