"""The ``aevb`` command: a thin layer over the library.

    aevb fit MODEL [flags]     fit one model into a run directory (``aevb fit MODEL --help``)
    aevb eval RUN_DIR          test ELBO, importance-weighted log-likelihood (and bits/dim) of a run
    aevb sample RUN_DIR        draw from a run's model into a PNG
    aevb tour                  the main job: every model briefly, on data that ships with the project, and a report
    aevb reproduce EXP|all     the tutorial's experiments with its settings, and a report

Errors in the user's input print one line, ``aevb: error: ...``, and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from aevb import evaluation, experiments, plotting, report, reproduce
from aevb.experiments.arguments import positive_float, positive_int
from aevb.runs import UsageError, load_run, run_directory


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with bad flags reported on one line (no usage dump) and no guessing of abbreviated flags."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="aevb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    fit = commands.add_parser("fit", help="fit a model", description="Fit a latent variable model with AEVB.")
    models = fit.add_subparsers(dest="model", required=True, parser_class=ArgumentParser)
    for module in experiments.MODULES:
        for name in module.MODELS:
            sub = models.add_parser(name, help=(module.__doc__ or "").splitlines()[0],
                                    description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(sub, name)
            add_output_arguments(sub, default_out=None)
            sub.set_defaults(handler=fit_command)

    evaluate = commands.add_parser("eval", help="test ELBO, IWAE log-likelihood (and bits/dim) of a run",
                                   description=evaluation.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    evaluate.add_argument("--iwae", type=positive_int, default=1000, metavar="K",
                          help="importance samples per test example (default 1000)")
    evaluate.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    evaluate.set_defaults(handler=eval_command)

    sample = commands.add_parser("sample", help="draw images from a run's model into a PNG")
    sample.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    sample.add_argument("--n", type=positive_int, default=30,
                        help="samples (per class for a conditional model without --label) (default 30)")
    sample.add_argument("--label", type=int, default=None, help="the class y to draw x ~ p(x|y) for (conditional models)")
    sample.add_argument("--out", type=Path, default=None, help="PNG file (default RUN_DIR/samples.png)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    sample.set_defaults(handler=sample_command)

    tour = commands.add_parser("tour", help="the main job: every model briefly, on embedded data, and a report",
                               description="Fit every experiment of the tutorial briefly on data that ship with the "
                                           "project (no network), then write OUT/report.html and OUT/report.md.")
    add_output_arguments(tour, default_out=Path("runs/tour"))
    tour.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tour.add_argument("--quick", action="store_true", help="a tiny budget (seconds, not minutes), e.g. for tests")
    tour.set_defaults(handler=tour_command)

    again = commands.add_parser("reproduce", help="the tutorial's experiments with its settings, and a report",
                                description="Fit the tutorial's experiments with its settings into OUT/EXPERIMENT, then "
                                            "write OUT/report.html and OUT/report.md. Run again with the same --out, an "
                                            "interrupted reproduce continues where it stopped (complete runs are kept).")
    again.add_argument("experiments", nargs="+", choices=[*reproduce.EXPERIMENTS, "all"], metavar="EXPERIMENT",
                       help=f"all, or some of {', '.join(reproduce.EXPERIMENTS)}")
    again.add_argument("--dataset", default="mnist",
                       help="data of the image experiments: mnist (the tutorial's), digits (offline) or idx:DIR (default mnist)")
    again.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (else $AEVB_DATA_DIR, else download)")
    again.add_argument("--epochs-scale", type=positive_float, default=1.0, metavar="F",
                       help="multiply the tutorial's training lengths by F (at least 1 epoch or step) (default 1)")
    again.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_output_arguments(again, default_out=Path("runs/reproduce"))
    again.set_defaults(handler=reproduce_command)
    return parser


def add_output_arguments(parser: argparse.ArgumentParser, default_out: Path | None) -> None:
    parser.add_argument("--out", type=Path, default=default_out,
                        help=f"run directory (default: {default_out or 'runs/MODEL-DATE-TIME'})")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def fit(args: argparse.Namespace, out: Path) -> dict:
    """Run ``aevb fit`` for the parsed ``args`` into the run directory ``out``; returns the summary."""
    with run_directory(out) as staging:
        summary = experiments.module_for(args.model).run(args, staging, args.progress)
    return {**summary, "run_dir": str(out)}


def fit_command(args: argparse.Namespace) -> dict:
    out = args.out or Path("runs") / f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    return fit(args, out)


def eval_command(args: argparse.Namespace) -> dict:
    return {**evaluation.evaluate_run(args.run_dir, args.iwae), "run_dir": str(args.run_dir)}


def sample_command(args: argparse.Namespace) -> dict:
    model, config = load_run(args.run_dir)
    torch.manual_seed(args.seed)
    x, row_labels = evaluation.generate(model, config, args.n, args.label)
    out = args.out or args.run_dir / "samples.png"
    columns = args.n if row_labels else min(args.n, 10)
    plotting.image_grid(plotting.as_grid(x, config["shape"], columns), out, row_labels)
    return {"samples": len(x), "out": str(out)}


def tour_command(args: argparse.Namespace) -> dict:
    """Every experiment afresh into ``OUT/<experiment>`` with the tour's budget, then the report."""
    # one CPU thread: the tour's models are small, and on a busy machine a second thread slows them down up to 10x
    statuses = reproduce.run(reproduce.tour(args.quick, args.seed), args.out, args.progress, resume=False, threads=1)
    command = f"aevb tour{' --quick' if args.quick else ''} --seed {args.seed}"
    return {"runs": statuses, **report.write_report(args.out, statuses, command)}


def reproduce_command(args: argparse.Namespace) -> dict:
    """The chosen experiments into ``OUT/<experiment>``, keeping complete ones, then the report."""
    planned = reproduce.plan(args.experiments, args.dataset, args.data_dir, args.epochs_scale, args.seed)
    statuses = reproduce.run(planned, args.out, args.progress, resume=True)
    command = (f"aevb reproduce {' '.join(args.experiments)} --dataset {args.dataset} "
               f"--epochs-scale {args.epochs_scale:g} --seed {args.seed}")
    return {"runs": statuses, **report.write_report(args.out, statuses, command)}


def print_summary(summary: dict, indent: str = "") -> None:
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            print_summary(value, indent + "  ")
        else:
            print(f"{indent}{key:<34} {value:.4f}" if isinstance(value, float) else f"{indent}{key:<34} {value}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = args.handler(args)
    except UsageError as e:
        print(f"aevb: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aevb: interrupted; the run in progress was not written", file=sys.stderr)
        return 130
    except torch._dynamo.exc.TorchDynamoException as e:  # only --compile runs torch.compile
        print(f"aevb: error: --compile failed: {str(e).strip().splitlines()[0]}; run without --compile", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
