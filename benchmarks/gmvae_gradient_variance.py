"""Gradient variance of the GMVAE's ELBO estimators (tutorial §5.5.3): the exact marginal sum against Gumbel-softmax.

On one fixed batch, each estimator's gradient of the mean ELBO is drawn ``--draws`` times (fresh noise each
time); the table gives, for single coordinates of three parameters, the mean and the standard deviation over
the draws. The model is first trained ``--train-epochs`` epochs with the marginal estimator, so the numbers
describe a model in training rather than at its random start. The relaxed estimator optimizes a different
(looser) objective, so its mean gradient differs from the others' too.

    PYTHONPATH=src python benchmarks/gmvae_gradient_variance.py --dataset mnist --data-dir ../shared/data/mnist --device cuda
"""
from __future__ import annotations

import argparse

import torch

from aevb.data import load_dataset, prepare
from aevb.models.gmvae import GMVAE, GMVAEConfig
from aevb.trainer import Trainer

SETTINGS = (  # (label, estimator, straight-through)
    ("marginal", "marginal", False),
    ("gumbel-relaxed", "gumbel-relaxed", False),
    ("gumbel-analytic", "gumbel-analytic", False),
    ("gumbel-relaxed, straight-through", "gumbel-relaxed", True),
    ("gumbel-analytic, straight-through", "gumbel-analytic", True),
)


def coordinates(model: GMVAE) -> dict[str, tuple[torch.nn.Parameter, tuple[int, ...]]]:
    """The parameter coordinates whose gradients are drawn: one in q(y|x), one in q(z|x,y), one in p(x|z)."""
    return {
        "q(y|x) logit bias [0]": (model.inference.logits_y[-1].bias, (0,)),
        "q(z|x,y) W_y [0, 0]": (model.inference.z_from_y.weight, (0, 0)),
        "p(x|z) output bias [centre]": (model.generative.decoder.net[-1].bias, (model.config.data_dim // 2,)),
    }


def gradient_draws(model: GMVAE, x: torch.Tensor, estimator: str, draws: int) -> dict[str, torch.Tensor]:
    """``draws`` independent gradients of the batch's mean ELBO, for each coordinate: {name: (draws,)}."""
    coords = coordinates(model)
    samples = {name: [] for name in coords}
    for _ in range(draws):
        model.zero_grad(set_to_none=True)
        model.elbo(x, estimator=estimator).elbo.mean().backward()
        for name, (param, index) in coords.items():
            samples[name].append(param.grad[index].item())
    return {name: torch.tensor(values, dtype=torch.float64) for name, values in samples.items()}


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    x_train, _, x_test, _ = prepare(load_dataset(args.dataset, args.data_dir, seed=args.seed), "binarize", args.seed)
    torch.manual_seed(args.seed)
    model = GMVAE(GMVAEConfig(data_dim=x_train.shape[1], temperature=args.temperature)).to(device)
    if args.train_epochs:
        Trainer(model, lr=1e-3, batch_size=100, estimator="marginal", seed=args.seed, progress=False).fit(
            (x_train.to(device),), epochs=args.train_epochs)
    x = x_test[: args.batch_size].to(device)
    print(f"{args.draws} gradient draws on {len(x)} test examples of {args.dataset}, tau = {args.temperature}, "
          f"after {args.train_epochs} epochs of marginal training; device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print("| estimator | parameter | mean gradient | std over draws |\n| --- | --- | --- | --- |")
    torch.manual_seed(args.seed + 1)
    for label, estimator, straight_through in SETTINGS:
        model.config.straight_through = straight_through
        for name, values in gradient_draws(model, x, estimator, args.draws).items():
            print(f"| {label} | {name} | {values.mean().item():.4g} | {values.std().item():.4g} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
