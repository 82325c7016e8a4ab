"""``aevb fit fa``: the tutorial's factor-analysis experiments (§5.2), or FA on the user's own data.

Experiment 1: joint AEVB, evaluated after every gradient step (estimated test ELBO, exact test
evidence) against the true model and the exact-EM maximum-likelihood fit (Figure 2).
Experiment 2: the EM view, 1000 phi-only steps then 1000 theta-only steps, two rounds (Figure 3).
``--dataset synthetic`` (the default) is the tutorial's data set; the user's data (``--dataset x.npy``)
are centred by their training mean, since the model has no mean parameter, and divided by their training
standard deviation s_d per column, so that the fit does not depend on the data's units (data in units of 1e6
made its gradient steps ill-conditioned). Every log-density of such a run (ELBOs, evidence, IWAE bound) is of
the standardized data; the summary's ``log_evidence_offset`` = -sum_d log s_d turns one into the data's units.

A fit whose test evidence stays more than ``MLE_TOLERANCE`` nats per dimension below the exact-EM fit's (the
maximum-likelihood reference every FA fit is measured against) gets a warning in its summary.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from aevb.data import standardize
from aevb.disk import DISK_ABOVE_BYTES, DiskRows
from aevb.errors import DataError, UsageError
from aevb.fitting import Data, Hooks, load_data
from aevb.models.fa import FactorAnalysis, fit_em, synthetic_data
from aevb.schedules import Schedule

EXPERIMENT_2_SCHEDULE = "alternate:1000,1000"
MLE_TOLERANCE = 0.1  # nats per dimension of x below the exact-EM fit's test evidence before the summary warns
SNAPSHOT_STEPS = (5, 100, 800)  # the tutorial's predictive checks


class FAHooks(Hooks):
    epochs, batch_size, lr = 35, 32, 1e-2
    dataset = "synthetic"
    datasets = ", or synthetic (the tutorial's data: L = 2, D = 3)"
    eval_every = "step"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--experiment", type=int, choices=(1, 2), default=1,
                            help=f"1: joint AEVB (Figure 2); 2: alternating E/M phases, {EXPERIMENT_2_SCHEDULE} "
                                 "twice unless --schedule or --steps say otherwise (Figure 3) (default 1)")

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        if args.experiment == 2:
            args.schedule = args.schedule or Schedule.parse(EXPERIMENT_2_SCHEDULE)
            if args.steps is None and not args.schedule.only:  # two rounds of E and M phases
                args.steps = 2 * (args.schedule.e_steps + args.schedule.m_steps)
        self.true_model: FactorAnalysis | None = None
        self.snapshots: dict[int, torch.Tensor] = {}

    def data(self) -> Data:
        if self.args.dataset == "synthetic":
            if self.args.transform not in (None, "none"):
                raise UsageError(f"--transform {self.args.transform}: the tutorial's synthetic data are fitted as they "
                                 "are; leave out --transform")
            self.true_model, x_train, x_test = synthetic_data(seed=self.args.seed)
            return Data((x_train,), (x_test,), None, (3,), "vectors")
        data = load_data(self.args, FactorAnalysis)
        if isinstance(data.train[0], DiskRows):
            raise DataError(f"{self.args.dataset}: factor analysis standardizes its training data in memory, and these "
                            "are left on disk (aevb.disk); fit it to one .npy file of at most "
                            f"{DISK_ABOVE_BYTES >> 30} GiB")
        x_train = data.train[0].flatten(1)
        constant = (x_train == x_train[0]).all(0).nonzero().flatten().tolist()
        if constant:  # its density is unbounded there: no maximum likelihood, and no evidence worth reporting
            raise DataError(f"{self.args.dataset}: column{'s' * (len(constant) > 1)} "
                            f"{', '.join(map(str, constant[:5]))} of the training data {'are' if len(constant) > 1 else 'is'}"
                            " constant, so the likelihood of factor analysis is unbounded; drop constant columns")
        u_train, u_test, _, (mean, std) = standardize(x_train, data.test[0].flatten(1), None, self.args.dataset)
        if data.standardization is not None:  # after --transform standardize's: x -> (x - m) / s -> (. - mean) / std
            before_mean, before_std = data.standardization
            mean, std = before_mean + before_std * mean, before_std * std
        return dataclasses.replace(data, train=(u_train,), test=(u_test,), standardization=(mean, std))

    def metrics(self, model: FactorAnalysis, data: Data, step: int | None) -> dict:
        """Exact test evidence (and, for experiment 2 and at the final evaluation, the exact ELBO and q's distance from the
        posterior)."""
        x_test = data.test[0]
        if step in SNAPSHOT_STEPS:
            self.snapshots[step] = model.sample(len(x_test))
        metrics = {"test_log_evidence": model.log_evidence(x_test).mean()}
        if self.args.experiment == 2 or step is None:
            metrics["test_elbo_exact"] = model.expected_elbo(x_test).mean()
            metrics["posterior_mean_error"], metrics["posterior_covariance_error"] = model.posterior_errors()
        return metrics

    def state_dict(self) -> dict:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        snapshots = state.get("snapshots", {})
        if not all(step in SNAPSHOT_STEPS and isinstance(x, torch.Tensor) for step, x in snapshots.items()):
            raise TypeError(f"its snapshots are {snapshots!r:.100}, not samples at steps {SNAPSHOT_STEPS}")
        self.snapshots = dict(snapshots)

    def summary(self, model: FactorAnalysis, data: Data, history: list[dict], generic: dict) -> dict:
        """The closed-form test ELBO and the exact evidence, against the exact-EM fit (and the true model)."""
        x_train, x_test = data.train[0].cpu(), data.test[0].cpu()
        model = model.cpu().eval()
        self.mle_log_evidence = fit_em(x_train, model.config.latent_dim, seed=self.args.seed).log_evidence(
            x_test.double()).mean().item()
        with torch.no_grad():
            test_elbo = model.expected_elbo(x_test).mean().item()
            test_log_evidence = model.log_evidence(x_test).mean().item()
        summary = {
            "experiment": self.args.experiment,
            "test_elbo_exact": test_elbo,  # the closed form, beside the one-sample estimate test_elbo (as aevb eval)
            "test_log_evidence": test_log_evidence,
            "variational_gap": test_log_evidence - test_elbo,
            "mle_log_evidence": self.mle_log_evidence,
            "gap_to_mle": self.mle_log_evidence - test_log_evidence,
            "first_epoch_within_0.005_of_mle": next(
                (r["epoch"] for r in history if abs(r["test_log_evidence"] - self.mle_log_evidence) <= 0.005), None),
        }
        if self.true_model is not None:
            summary["true_log_evidence"] = self.true_model.log_evidence(x_test).mean().item()
        tolerance = MLE_TOLERANCE * x_test.shape[1]
        if summary["gap_to_mle"] > tolerance:
            summary["warnings"] = [f"the test log evidence {test_log_evidence:.4g} is {summary['gap_to_mle']:.4g} nats "
                                   f"below the exact-EM fit's {self.mle_log_evidence:.4g}, more than {MLE_TOLERANCE:g} "
                                   "per dimension: the fit has not converged to it; fit longer (more --epochs or "
                                   "--steps) or with another --lr"]
        return summary

    def figures(self, model: FactorAnalysis, history: list[dict], data: Data, run_dir) -> None:
        """Figure 2 (experiment 1) or Figure 3 (experiment 2), against the exact-EM fit and the true model."""
        from aevb import plotting

        references = {"exact-EM fit (MLE)": self.mle_log_evidence}
        if self.true_model is not None:
            references["true model"] = self.true_model.log_evidence(data.test[0].cpu()).mean().item()
        if self.args.experiment == 1:
            x_test = data.test[0].cpu().numpy()
            plotted = {s: (g.cpu().numpy(), x_test) for s, g in self.snapshots.items()}
            plotting.fa_learning_curve(history, references, plotted, run_dir / "fa_learning_curve.png")
        else:
            spans = self.args.schedule.phase_spans(history[-1]["step"])
            plotting.em_phases(history, spans, references, run_dir / "fa_em_phases.png")
