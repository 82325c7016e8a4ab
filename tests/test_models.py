"""Every built-in model, in small configurations, held to the model contract by ``aevb.testing.check_model`` (config,
parameter groups, ELBO terms, gradients, reparameterization, E/M-step isolation, importance weights, sampling,
encoding, checkpoint round trip, determinism); then what the contract leaves to each model: the size of its code,
gradients under every GMVAE estimator, one graph for torch.compile, and compiled training."""
import os
import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from aevb import registry
from aevb.models import cvae, gmvae
from aevb.testing import check_model
from aevb.trainer import Trainer

B, D, L, C, T = 6, 12, 3, 4, 5
SMALL = dict(data_dim=D, latent_dim=L, hidden=(16, 16))


def data(kind: str, shape=(B, D)) -> torch.Tensor:
    u = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    return {"cb": u, "bernoulli": (u > 0.5).float(), "gaussian": 4 * u - 2}[kind]


LABELS = torch.arange(B) % C

# example name -> (built-in model name, its Config's fields, a batch, the size of one example's code from ``encode``)
EXAMPLES = {
    **{f"fa-{posterior}": ("fa", dict(data_dim=D, latent_dim=L, posterior=posterior), (data("gaussian"),), L)
       for posterior in ("full", "diagonal")},
    **{f"vae-{lik}": ("vae", dict(SMALL, likelihood=lik), (data(lik),), L) for lik in ("cb", "bernoulli", "gaussian")},
    "vae-gaussian-fixed-scale": ("vae", dict(SMALL, likelihood="gaussian", likelihood_scale=0.5),
                                 (data("gaussian"),), L),
    **{f"cvae-{variant}": ("cvae", dict(SMALL, num_classes=C, variant=variant), (data("cb"), LABELS), L)
       for variant in cvae.VARIANTS},
    **{f"gmvae-{variant}": ("gmvae", dict(data_dim=D, num_components=C, latent_dim=L, hidden=(16, 16), variant=variant),
                            (data("bernoulli"),), L)
       for variant in gmvae.VARIANTS},
    **{f"vrnn-{lik}": ("vrnn", dict(data_dim=D, seq_len=T, latent_dim=2, hidden_dim=16, mlp_dim=24, likelihood=lik),
                       (data(lik, (B, T, D)),), T * 2)
       for lik in ("bernoulli", "cb")},
}


def example(name: str):
    """(model, batch) of the example ``name``: the model found by its registry name, built from seed 0."""
    model_name, fields, batch, _ = EXAMPLES[name]
    cls = registry.resolve(model_name)
    torch.manual_seed(0)
    return cls(cls.Config(**fields)), batch


def test_every_builtin_model_has_examples():
    assert {model_name for model_name, *_ in EXAMPLES.values()} == set(registry.BUILTIN)


@pytest.mark.parametrize("name", EXAMPLES)
def test_model_keeps_the_contract(name):
    model, batch = example(name)
    assert set(check_model(model, batch).values()) == {"passed"}
    assert model.encode(*batch).shape == (B, EXAMPLES[name][3])


@pytest.mark.parametrize("estimator", gmvae.ESTIMATORS)
def test_gradients_reach_both_groups_with_every_gmvae_estimator(estimator):
    model, batch = example("gmvae-gmm")
    model.elbo(*batch, estimator=estimator).elbo.mean().backward()
    for group, params in model.parameter_groups().items():
        assert sum(p.grad.abs().sum() for p in params if p.grad is not None) > 0, group


@pytest.mark.parametrize("name", EXAMPLES)
def test_elbo_traces_into_one_graph_for_torch_compile(name):
    """No graph break: a break hands each compiled step back to Python midway (on a GPU, it splits the CUDA graphs)."""
    model, batch = example(name)
    model.elbo(*batch)  # eager first, as the Trainer does: it fills torch's KL memo, which dynamo cannot trace
    explanation = torch._dynamo.explain(lambda *batch: model.elbo(*batch).elbo.mean())(*batch)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.compile
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on a CPU needs a C++ compiler")
@pytest.mark.parametrize("name", ["gmvae-gmm", "vrnn-bernoulli", "vae-cb", "cvae-full"])
def test_compiled_training_matches_eager_in_one_graph(name):
    """``torch_compile=True`` trains to the same ELBOs as eager from the same draws, compiling once (the VAE's and
    CVAE's dropout masks too: the compiled code calls the same mask operator, one draw per layer)."""
    histories = []
    for torch_compile in (False, True):
        model, batch = example(name)
        torch._dynamo.reset()
        counters.clear()
        with torch._inductor.config.patch(fallback_random=True):  # compiled code draws its noise as eager does
            trainer = Trainer(model, batch_size=B // 2, progress=False, torch_compile=torch_compile)
            histories.append([r["train_elbo"] for r in trainer.fit(batch, steps=4, eval_every="step")])
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert histories[1] == pytest.approx(histories[0], rel=1e-5)
