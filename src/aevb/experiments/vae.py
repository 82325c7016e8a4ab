"""``aevb fit vae|cvae``: the tutorial's VAE (§5.3) and conditional VAE (§5.4) on image data.

Defaults are the tutorial's (latent 20, hidden 500-500, dropout 0.1, batch 100, Adam 3e-4, continuous
Bernoulli on dequantized pixels) on scikit-learn's digits, which ship with the project; full MNIST with
``--dataset mnist --data-dir DIR``. Beside the generic figures (learning curve, samples, t-SNE of the test
posterior means), a fit draws the decoder's parameters for prior draws (the tutorial's Figure 6; one row per
class for the CVAE).
"""
from __future__ import annotations

from pathlib import Path

import torch

from aevb.evaluation import eval_mode
from aevb.fitting import GRID_COLUMNS, Data, Hooks, is_conditional, plot_examples
from aevb.likelihoods import parameter_image
from aevb.model import LatentVariableModel


class VAEHooks(Hooks):
    epochs, batch_size, lr = 10, 100, 3e-4

    def figures(self, model: LatentVariableModel, history: list[dict], data: Data, run_dir: Path) -> None:
        super().figures(model, history, data, run_dir)
        torch.manual_seed(self.args.seed)
        with eval_mode(model) as device:
            if is_conditional(type(model)):
                labels = torch.arange(data.num_classes, device=device).repeat_interleave(GRID_COLUMNS)
                p_x, rows = model.decode(len(labels), labels), [str(c) for c in range(data.num_classes)]
            else:
                p_x, rows = model.decode(3 * GRID_COLUMNS), None
        plot_examples(parameter_image(p_x), rows, data.shape, data.kind, run_dir / f"{model.name}_decoder_parameters.png",
                      title="decoder parameters for draws from the prior")
