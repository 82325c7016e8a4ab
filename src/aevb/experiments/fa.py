"""``aevb fit fa``: the tutorial's factor-analysis experiments (§5.2), or FA on the user's own array.

Experiment 1: joint AEVB, evaluated after every gradient step (estimated test ELBO, exact test
evidence) against the true model and the exact-EM maximum-likelihood fit (Figure 2).
Experiment 2: the EM view, 1000 phi-only steps then 1000 theta-only steps, two rounds (Figure 3).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from aevb.data import load_array, split
from aevb.experiments.arguments import add_training_arguments, positive_int
from aevb.models.fa import POSTERIORS, FactorAnalysis, FAConfig, fit_em, synthetic_data
from aevb.elbo import ESTIMATORS
from aevb import plotting
from aevb.runs import UsageError, append_jsonl, save_run
from aevb.trainer import SCHEDULE_HELP, Schedule, Trainer

MODELS = ("fa",)
EXPERIMENT_2_SCHEDULE = "alternate:1000,1000"
SNAPSHOT_STEPS = (5, 100, 800)  # the tutorial's predictive checks


def schedule_type(text: str) -> Schedule:
    try:
        return Schedule.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    parser.add_argument("--experiment", type=int, choices=(1, 2), default=1,
                        help="1: joint AEVB (Figure 2); 2: alternating E/M phases (Figure 3) (default 1)")
    parser.add_argument("--schedule", type=schedule_type, default=None,
                        help=f"{SCHEDULE_HELP} (default: joint for experiment 1, {EXPERIMENT_2_SCHEDULE} for 2)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="gradient steps instead of epochs (default: 35 epochs; experiment 2: two E/M rounds)")
    add_training_arguments(parser, epochs=35, batch_size=32, lr=1e-2)
    parser.add_argument("--latent-dim", type=positive_int, default=2, help="latent dimension L (default 2)")
    parser.add_argument("--posterior", choices=POSTERIORS, default="full", help="q's covariance (default full)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="aevb", help="ELBO estimator (default aevb)")
    parser.add_argument("--data", type=Path, default=None,
                        help="your own (N, D) array (.npy, .npz or .csv); centred, 80/20 train/test split "
                             "(default: the tutorial's synthetic data)")


def load_data(args) -> tuple[FactorAnalysis | None, torch.Tensor, torch.Tensor]:
    """(true model or None, x_train, x_test); user data is centred by its training mean."""
    if args.data is None:
        return synthetic_data(seed=args.seed)
    x = torch.as_tensor(load_array(args.data, ndim=2)["x"], dtype=torch.float32)
    if args.latent_dim > x.shape[1]:
        raise UsageError(f"--latent-dim {args.latent_dim} exceeds the data dimension {x.shape[1]} of {args.data}")
    if len(x) < 4:
        raise UsageError(f"{args.data}: needs at least 4 rows to split into training and test data, has {len(x)}")
    x_train, x_test = split(x, test_fraction=0.2, seed=args.seed)
    mean = x_train.mean(0)
    return None, x_train - mean, x_test - mean


def run(args, run_dir: Path, progress: bool) -> dict:
    if args.data is None and args.latent_dim > 3:
        raise UsageError(f"--latent-dim {args.latent_dim} exceeds the synthetic data's dimension 3")
    true_model, x_train, x_test = load_data(args)
    schedule = args.schedule or Schedule.parse("joint" if args.experiment == 1 else EXPERIMENT_2_SCHEDULE)
    steps = args.steps or (2 * (schedule.e_steps + schedule.m_steps) if args.experiment == 2 and not schedule.only else None)

    mle = fit_em(x_train, args.latent_dim, seed=args.seed)
    mle_log_evidence = mle.log_evidence(x_test.double()).mean().item()
    torch.manual_seed(args.seed)
    model = FactorAnalysis(FAConfig(x_train.shape[1], args.latent_dim, args.posterior))
    trainer = Trainer(model, schedule, args.lr, args.batch_size, args.estimator, args.seed, progress,
                      torch_compile=args.compile)

    snapshots = {}

    def evaluate(model: FactorAnalysis) -> dict[str, torch.Tensor]:
        """Per-step test metrics; predictive-check samples at the tutorial's steps."""
        if trainer.step_count in SNAPSHOT_STEPS:
            snapshots[trainer.step_count] = model.sample(len(x_test))
        metrics = {"test_elbo": model.elbo(x_test).elbo.mean(), "test_log_evidence": model.log_evidence(x_test).mean()}
        if args.experiment == 2:
            metrics["test_elbo_exact"] = model.expected_elbo(x_test).mean()
            metrics["posterior_mean_error"], metrics["posterior_covariance_error"] = model.posterior_errors()
        return metrics

    metrics_path = run_dir / "metrics.jsonl"
    start = time.perf_counter()
    history = trainer.fit((x_train,), epochs=args.epochs, steps=steps, evaluate=evaluate, eval_every="step",
                          callbacks=[lambda records: append_jsonl(metrics_path, records)])
    seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        test_elbo = model.expected_elbo(x_test).mean().item()
        test_log_evidence = model.log_evidence(x_test).mean().item()
    summary = {
        "model": "fa",
        "experiment": args.experiment,
        "schedule": str(schedule),
        "steps": trainer.step_count,
        "epochs": history[-1]["epoch"],
        "test_elbo": test_elbo,
        "test_log_evidence": test_log_evidence,
        "variational_gap": test_log_evidence - test_elbo,
        "mle_log_evidence": mle_log_evidence,
        "gap_to_mle": mle_log_evidence - test_log_evidence,
        "first_epoch_within_0.005_of_mle": next(
            (r["epoch"] for r in history if abs(r["test_log_evidence"] - mle_log_evidence) <= 0.005), None
        ),
        "train_seconds": seconds,
    }
    references = {"exact-EM fit (MLE)": mle_log_evidence}
    if true_model is not None:
        summary["true_log_evidence"] = true_model.log_evidence(x_test).mean().item()
        references["true model"] = summary["true_log_evidence"]

    if args.experiment == 1:
        plotted = {s: (g.numpy(), x_test.numpy()) for s, g in snapshots.items()}
        plotting.fa_learning_curve(history, references, plotted, run_dir / "fa_learning_curve.png")
    else:
        plotting.em_phases(history, schedule.phase_spans(trainer.step_count), references, run_dir / "fa_em_phases.png")
    save_run(run_dir, model, {**vars(args), "schedule": str(schedule)}, summary)
    return summary
