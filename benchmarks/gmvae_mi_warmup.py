"""A warm-up of the GMVAE's mutual information alone: the prototype lever of the README's GMVAE section.

The discrete KL of the ELBO, averaged over the data, splits into the mutual information of x and y under q and a
balance term (q_bar(y) = E_x q(y|x), here the batch's mean):

    E_x KL(q(y|x) || p(y)) = I_q(x; y) + KL(q_bar || p(y)).

``aevb fit gmvae --discrete-kl-warmup E`` weights the whole discrete KL by w; this trains on

    ELBO(x) + (1 - w) [KL(q(y|x) || p(y)) - KL(q_bar || p(y))]

instead, whose batch mean weights I_q by w and keeps the balance term at full weight, w from
``--discrete-kl-start`` to 1 over ``--discrete-kl-warmup`` epochs (at w = 1 it is the ELBO). Everything else is
``aevb fit gmvae``: the flags, the run directory, the records (the ELBO) and the summary.

    PYTHONPATH=src python benchmarks/gmvae_mi_warmup.py runs/mi-s0 --dataset mnist --data-dir ../shared/data/mnist \\
        --epochs 20 --discrete-kl-warmup 10 --seed 0 --threads 1 --iwae 0
"""
from __future__ import annotations

import sys
from pathlib import Path

from torch import Tensor
from torch.distributions import Independent, OneHotCategorical

from aevb import fitting
from aevb.elbo import ELBO
from aevb.errors import UsageError
from aevb.models.gmvae import GMVAE


class MutualInformationWarmupGMVAE(GMVAE):
    """The GMVAE, trained on the objective above; its ELBO, bounds and evaluation unchanged."""

    name = "gmvae-mi-warmup"

    def marginal_elbo(self, x: Tensor, q_y: OneHotCategorical, q_z: Independent, num_samples: int = 1) -> ELBO:
        terms = super().marginal_elbo(x, q_y, q_z, num_samples)
        if not self.training:
            return terms
        q_bar = OneHotCategorical(probs=q_y.probs.mean(0), validate_args=False)  # the batch's mean q(y|x)
        balance = self.kl_y(q_bar)  # KL(q_bar || p(y)), a scalar
        objective = terms.elbo + (1 - self.discrete_kl_weight) * (self.kl_y(q_y) - balance)
        return terms._replace(objective=objective)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print("usage: gmvae_mi_warmup.py OUT [aevb fit gmvae flags]", file=sys.stderr)
        sys.exit(2)
    args = fitting.parse_fit_args(MutualInformationWarmupGMVAE, sys.argv[2:])
    try:
        print(fitting.run_fit(MutualInformationWarmupGMVAE, args, Path(sys.argv[1]), progress=False))
    except UsageError as error:  # bad data, an interrupted run in OUT, divergence: one line and exit 2, as aevb fit
        print(f"gmvae_mi_warmup.py: {error}", file=sys.stderr)
        sys.exit(2)
