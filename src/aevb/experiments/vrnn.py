"""``aevb fit vrnn``: the tutorial's variational RNN (§5.6) on sequences, images read row by row.

Defaults are the tutorial's (latent 2 per step, a 2-layer LSTM of 256, MLPs 500-500, batch 100, Adam
1e-3) on scikit-learn's 8x8 digits (8 steps of 8 pixels), which ship with the project; full MNIST
(28 steps of 28 pixels) with ``--dataset mnist --data-dir DIR``; your own sequences as an (N, T, D) array in
a .npy/.npz file: binary ones with the Bernoulli likelihood, values in [0, 1] with ``--likelihood cb``, real
values (a time series) with ``--likelihood gaussian``.
Image pixels are binarized as in the tutorial. Beside the generic figures, a fit draws generations from the
prior step by step (each step's decoder parameters given the steps before, and for images read row by row an
animated GIF of the rows appearing; longer sequences are drawn as series over time); on MNIST its learning
curve shows the tutorial's published one. Numbers are nats per sequence.
"""
from __future__ import annotations

from pathlib import Path

import torch

from aevb.evaluation import eval_mode
from aevb.fitting import GRID_COLUMNS, Data, Hooks, grey_range, plot_examples
from aevb.models.vrnn import VRNN
from aevb.tutorial import TUTORIAL_VRNN_TEST_ELBO

GRID_ROWS = 4


class VRNNHooks(Hooks):
    epochs, batch_size, lr = 7, 100, 1e-3

    def figures(self, model: VRNN, history: list[dict], data: Data, run_dir: Path) -> None:
        from aevb import plotting

        tutorial = {}
        if self.args.dataset == "mnist":
            history = history + [{"epoch": e, "tutorial": v} for e, v in enumerate(TUTORIAL_VRNN_TEST_ELBO, start=1)]
            tutorial["tutorial"] = "tutorial's test ELBO (its code draws z_t with sample())"
        self.learning_curve(history, run_dir / "vrnn_learning_curve.png", extra=tutorial,
                            title=f"vrnn on {self.args.dataset}, nats per sequence")
        torch.manual_seed(self.args.seed)
        with eval_mode(model):
            samples, parameters = model.generate(GRID_ROWS * GRID_COLUMNS)
        scale = grey_range(data.test[0])  # [0, 1], or wider for real data
        plot_examples(parameters, None, data.shape, data.kind, run_dir / "vrnn_decoder_parameters.png",
                      title="generated step by step from the prior: each step's decoder parameters given the steps "
                            "before", value_range=scale)
        plot_examples(samples, None, data.shape, data.kind, run_dir / "vrnn_samples.png",
                      title="generated step by step from the prior: samples", reference=data.test[0],
                      value_range=scale)
        if plotting.image_like(data.shape):
            plotting.rows_animation(plotting.as_grid(parameters.flatten(1), data.shape, GRID_COLUMNS),
                                    run_dir / "vrnn_generation.gif", title="generation row by row from the prior",
                                    value_range=scale)
        self.embedding(model, data, run_dir / "vrnn_tsne.png")
