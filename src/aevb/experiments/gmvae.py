"""``aevb fit gmvae``: the tutorial's Gaussian-mixture VAE (§5.5), clustering binarized images.

Defaults are the tutorial's (C = 10 components, latent 64, hidden 512-512, batch 100, Adam 1e-3, the exact
marginal estimator) on scikit-learn's digits, which ship with the project; full MNIST with ``--dataset mnist
--data-dir DIR``. Every epoch it evaluates, on the test set, the ELBO (the marginal estimator, whatever trained
the model, including the -log C the tutorial's printed values leave out), the conditional entropy H(q(y|x))
and the Hungarian-matched clustering accuracy (metrics.jsonl, and their curves: the tutorial's Figure 10).
The summary adds NMI and the cluster proportions; a figure shows generations per cluster, one row per cluster,
rows ordered by the label each cluster is matched to. With more components than classes (``--components 30``),
the components are also merged into as many groups as classes, without labels, and the groups' one-to-one
accuracy is ``merged_accuracy`` (``cluster_metrics``).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch.distributions import Categorical

from aevb import clustering
from aevb.errors import UsageError
from aevb.evaluation import eval_mode, rows_over_ranks
from aevb.arguments import fraction, non_negative_float, non_negative_int, positive_float
from aevb.fitting import Data, Hooks
from aevb.models.gmvae import WARMUP_TERMS, GMVAE, KLWeightSchedule, TemperatureSchedule

GENERATIONS_PER_CLUSTER = 10


def cluster_metrics(model: GMVAE, data: Data) -> dict:
    """Test-set clustering: mean H(q(y|x)), the argmax clusters, and (with labels) accuracy, NMI, matching.

    With more components than the data have classes, also ``merged_accuracy``: the one-to-one accuracy of the
    components merged into as many groups as classes (``clustering.merge_components``, from q(y|x) on the
    training set: no label is used to form the groups), and the groups (``merged_groups``)."""
    c, k = model.config.num_components, data.num_classes
    merge = data.y_test is not None and c > k
    with eval_mode(model) as device:
        probs = rows_over_ranks(model.cluster_probs, data.test[:1], 1000, device)  # (M, C)
        train_probs = rows_over_ranks(model.cluster_probs, data.train[:1], 1000, device) if merge else None  # (N, C)
    clusters = probs.argmax(1).cpu().numpy()
    metrics = {"conditional_entropy": Categorical(probs=probs).entropy().mean().item(), "clusters": clusters,
               "cluster_proportions": clustering.cluster_proportions(clusters, c)}
    if data.y_test is not None:
        labels = data.y_test.numpy()
        metrics.update(cluster_accuracy=clustering.cluster_accuracy(clusters, labels, c, k),
                       majority_accuracy=clustering.majority_accuracy(clusters, labels, c, k),
                       nmi=clustering.nmi(clusters, labels),
                       matched_labels=clustering.match_clusters(clusters, labels, c, k))
        if merge:
            groups = clustering.merge_components(train_probs.cpu().numpy(), k)
            merged = clustering.merged_clusters(probs.cpu().numpy(), groups)
            metrics.update(merged_accuracy=clustering.cluster_accuracy(merged, labels, k, k), merged_groups=groups)
    return metrics


class GMVAEHooks(Hooks):
    epochs, batch_size, lr, iwae = 20, 100, 1e-3, 0
    likelihood = "bernoulli"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--temperature-decay", type=fraction, default=1.0,
                            help="multiply tau by this after every epoch, in (0, 1]; 1 keeps it constant (default 1)")
        parser.add_argument("--temperature-min", type=positive_float, default=0.1,
                            help="the floor a decaying tau stops at (default 0.1)")
        parser.add_argument("--discrete-kl-warmup", type=non_negative_int, default=0, metavar="EPOCHS",
                            help="train on the ELBO with KL(q(y|x) || p(y)) weighted by w, linear from "
                                 "--discrete-kl-start to 1 over this many epochs; records stay the ELBO (default 0: none)")
        parser.add_argument("--discrete-kl-start", type=non_negative_float, default=0.0, metavar="W",
                            help="the first epoch's weight w of the discrete KL under a warm-up (default 0)")
        parser.add_argument("--discrete-kl-warmup-term", choices=WARMUP_TERMS, default="kl",
                            help="what the warm-up weights by w: kl, the whole discrete KL; mutual-information, only "
                                 "I_q(x; y), the balance term KL(q_bar || p(y)) at full weight (default kl)")

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        if args.estimator in (None, "marginal") and args.config_straight_through:
            raise UsageError("--straight-through is for the Gumbel estimators; add --estimator gumbel-relaxed or "
                             "gumbel-analytic")
        if args.discrete_kl_warmup_term != "kl" and not args.discrete_kl_warmup:
            raise UsageError(f"--discrete-kl-warmup-term {args.discrete_kl_warmup_term} weights a warm-up; add "
                             f"--discrete-kl-warmup EPOCHS")

    @property
    def kl_weights(self) -> KLWeightSchedule:
        return KLWeightSchedule(self.args.discrete_kl_start, self.args.discrete_kl_warmup)

    def initialize(self, model: GMVAE, data: Data) -> None:
        """The first epoch's discrete-KL weight (a resumed fit then loads the weight it had reached) and what it weighs
        (``--discrete-kl-warmup-term``). A mixture with more components than training examples is refused here,
        before training: some could hold no example."""
        examples, components = len(data.train[0]), model.config.num_components
        if components > examples:
            raise UsageError(f"--components {components}: {components} components exceed the {examples} training "
                             f"examples; use --components {examples} or less")
        model.discrete_kl_weight.fill_(self.kl_weights(0))
        model.warmup_term = self.args.discrete_kl_warmup_term

    def callbacks(self, model: GMVAE) -> list:
        args = self.args
        return [TemperatureSchedule(args.config_temperature, args.temperature_decay, args.temperature_min).callback(model.tau),
                self.kl_weights.callback(model.discrete_kl_weight)]

    def metrics(self, model: GMVAE, data: Data, step: int | None) -> dict:
        metrics = cluster_metrics(model, data)
        scalars = {k: metrics[k] for k in ("conditional_entropy", "cluster_accuracy", "majority_accuracy",
                                           "merged_accuracy", "nmi") if k in metrics}
        # the schedules' values the epoch just finished trained with (the callbacks set the next epoch's after this)
        gumbel = {} if self.args.estimator in (None, "marginal") else {"temperature": model.temperature}
        warmup = {"discrete_kl_weight": model.discrete_kl_weight.item()} if self.args.discrete_kl_warmup else {}
        return {**scalars, **gumbel, **warmup}

    def summary(self, model: GMVAE, data: Data, history: list[dict], generic: dict) -> dict:
        torch.manual_seed(self.args.seed)
        self.final = cluster_metrics(model, data)
        return {
            "estimator": self.args.estimator or "marginal",
            # comparable with the tutorial's printed values, which leave out the -log C of KL(q(y|x) || p(y))
            "test_elbo_without_log_c": generic["test_elbo"] + math.log(model.config.num_components),
            "conditional_entropy": self.final["conditional_entropy"],
            "cluster_accuracy": self.final.get("cluster_accuracy"),
            "majority_accuracy": self.final.get("majority_accuracy"),
            **({"merged_accuracy": self.final["merged_accuracy"],
                "merged_groups": self.final["merged_groups"].tolist()} if "merged_accuracy" in self.final else {}),
            "nmi": self.final.get("nmi"),
            "cluster_proportions": [round(float(p), 4) for p in self.final["cluster_proportions"]],
        }

    def figures(self, model: GMVAE, history: list[dict], data: Data, run_dir: Path) -> None:
        """The tutorial's Figure 10 (test ELBO, H(q(y|x)), accuracy per epoch; with more components than classes,
        the merged accuracy too) and generations per cluster."""
        from aevb import plotting

        plotting.epoch_panels(history, {"test_elbo": "test ELBO (nats)", "conditional_entropy": "H(q(y|x)) (nats)",
                                        "cluster_accuracy": "clustering accuracy",
                                        "merged_accuracy": "accuracy, components merged"},
                              run_dir / "gmvae_learning_curves.png",
                              title=f"GMVAE ({self.args.estimator or 'marginal'}) on {self.args.dataset}")
        self.generations(model, data, run_dir / "gmvae_cluster_generations.png")

    def generations(self, model: GMVAE, data: Data, path: Path) -> None:
        """p(x = 1 | z) (``m2``: p(x = 1 | y = c, z)), z ~ p(z | y = c): one row per cluster c, rows in the order of
        their matched labels."""
        from aevb import plotting

        c, proportions = model.config.num_components, self.final["cluster_proportions"]
        matched = self.final.get("matched_labels", np.full(c, -1))
        order = clustering.order_by_label(matched)
        torch.manual_seed(self.args.seed)
        with eval_mode(model):
            images = model.generate(GENERATIONS_PER_CLUSTER)[torch.as_tensor(order)]  # (C, N, D), rows reordered
        rows = [f"{'label ' + str(matched[k]) if matched[k] >= 0 else 'unmatched'} (cluster {k}, {proportions[k]:.0%})"
                for k in order]
        grid = plotting.as_grid(images.reshape(c * GENERATIONS_PER_CLUSTER, -1), data.shape, GENERATIONS_PER_CLUSTER)
        plotting.image_grid(grid, path, rows, title="generations per cluster, p(x=1|z), z ~ p(z|y)")
