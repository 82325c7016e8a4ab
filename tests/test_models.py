"""One shared set of generic checks that every model passes: parameter groups, ELBO terms and shapes,
gradients reaching both groups, importance weights, sampling, encoding, a checkpoint round trip, and
compiled training."""
import json
import os
import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from aevb import evaluation
from aevb.models import MODELS, from_checkpoint
from aevb.models.cvae import CVAE, VARIANTS, CVAEConfig
from aevb.models.fa import FactorAnalysis, FAConfig
from aevb.models.gmvae import ESTIMATORS, GMVAE, GMVAEConfig
from aevb.models.vae import VAE, VAEConfig
from aevb.models.vrnn import VRNN, VRNNConfig
from aevb.trainer import Trainer

B, D, L, C, T = 6, 12, 3, 4, 5
SMALL = dict(data_dim=D, latent_dim=L, hidden=(16, 16))


def data(kind: str, shape=(B, D)) -> torch.Tensor:
    u = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    return {"cb": u, "bernoulli": (u > 0.5).float(), "gaussian": 4 * u - 2}[kind]


LABELS = torch.arange(B) % C

# name -> () -> (model, batch, size of one example's code from ``encode``)
EXAMPLES = {
    **{f"fa-{posterior}": (lambda posterior=posterior: (FactorAnalysis(FAConfig(D, L, posterior)), (data("gaussian"),), L))
       for posterior in ("full", "diagonal")},
    **{f"vae-{lik}": (lambda lik=lik: (VAE(VAEConfig(**SMALL, likelihood=lik)), (data(lik),), L))
       for lik in ("cb", "bernoulli", "gaussian")},
    "vae-gaussian-fixed-scale": lambda: (VAE(VAEConfig(**SMALL, likelihood="gaussian", likelihood_scale=0.5)),
                                         (data("gaussian"),), L),
    **{f"cvae-{variant}": (lambda variant=variant: (CVAE(CVAEConfig(**SMALL, num_classes=C, variant=variant)),
                                                    (data("cb"), LABELS), L))
       for variant in VARIANTS},
    **{f"gmvae-{variant}": (lambda variant=variant: (GMVAE(GMVAEConfig(D, C, L, (16, 16), variant=variant)),
                                                     (data("bernoulli"),), L))
       for variant in ("gmm", "m2")},
    **{f"vrnn-{lik}": (lambda lik=lik: (VRNN(VRNNConfig(D, T, 2, hidden_dim=16, mlp_dim=24, likelihood=lik)),
                                        (data(lik, (B, T, D)),), T * 2))
       for lik in ("bernoulli", "cb")},
}


def test_every_registered_model_has_examples():
    assert {name.split("-")[0] for name in EXAMPLES} == set(MODELS)


@pytest.mark.parametrize("name", EXAMPLES)
def test_generic_model_checks(name):
    torch.manual_seed(0)
    model, batch, code_size = EXAMPLES[name]()
    x, context = batch[0], batch[1:]
    groups = model.parameter_groups()
    assert {id(p) for g in groups.values() for p in g} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in groups["generative"]} & {id(p) for p in groups["inference"]}

    out = model.elbo(*batch)
    assert out.elbo.shape == out.log_likelihood.shape == out.kl.shape == (B,)
    torch.testing.assert_close(out.elbo, out.log_likelihood - out.kl)
    assert (out.kl >= 0).all()
    assert model.log_importance_weights(*batch, num_samples=5).shape == (5, B)
    assert model.iwae_bound(*batch, num_samples=7, chunk_size=3).shape == (B,)

    (-out.elbo.mean()).backward()
    for group, params in groups.items():  # every parameter of both groups gets a gradient
        for p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches a {group} parameter"

    assert model.encode(*batch).shape == (B, code_size)
    assert model.sample(B, *context).shape == x.shape


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradients_reach_both_groups_with_every_gmvae_estimator(estimator):
    torch.manual_seed(0)
    model, batch, _ = EXAMPLES["gmvae-gmm"]()
    model.elbo(*batch, estimator=estimator).elbo.mean().backward()
    for group, params in model.parameter_groups().items():
        assert sum(p.grad.abs().sum() for p in params if p.grad is not None) > 0, group


@pytest.mark.parametrize("name", ["fa-full", "cvae-full", "gmvae-m2", "vrnn-bernoulli"])
def test_checkpoint_round_trip_gives_identical_numbers(name):
    torch.manual_seed(0)
    model, batch, _ = EXAMPLES[name]()
    checkpoint = model.checkpoint()
    checkpoint["config"] = json.loads(json.dumps(checkpoint["config"]))  # as a run's files hold it
    clone = from_checkpoint(checkpoint)
    assert type(clone) is type(model) and clone.config == model.config
    assert evaluation.evaluate(clone, batch, num_samples=10, seed=3) == evaluation.evaluate(model, batch, num_samples=10, seed=3)


@pytest.mark.parametrize("name", EXAMPLES)
def test_elbo_traces_into_one_graph_for_torch_compile(name):
    """No graph break: a break hands each compiled step back to Python midway (on a GPU, it splits the CUDA graphs)."""
    torch.manual_seed(0)
    model, batch, _ = EXAMPLES[name]()
    model.elbo(*batch)  # eager first, as the Trainer does: it fills torch's KL memo, which dynamo cannot trace
    explanation = torch._dynamo.explain(lambda *batch: model.elbo(*batch).elbo.mean())(*batch)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on a CPU needs a C++ compiler")
@pytest.mark.parametrize("name", ["gmvae-gmm", "vrnn-bernoulli"])
def test_compiled_training_matches_eager_in_one_graph(name):
    """``torch_compile=True`` trains to the same ELBOs as eager from the same draws, compiling once."""
    histories = []
    for torch_compile in (False, True):
        torch.manual_seed(0)
        model, batch, _ = EXAMPLES[name]()
        torch._dynamo.reset()
        counters.clear()
        with torch._inductor.config.patch(fallback_random=True):  # compiled code draws its noise as eager does
            trainer = Trainer(model, batch_size=B // 2, progress=False, torch_compile=torch_compile)
            histories.append([r["train_elbo"] for r in trainer.fit(batch, steps=4, eval_every="step")])
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert histories[1] == pytest.approx(histories[0], rel=1e-5)
