"""The ``aevb`` command: a thin layer over the library.

    aevb fit MODEL [flags]     fit a model into a run directory (``aevb fit --help`` lists the models,
                               ``aevb fit MODEL --help`` its flags); MODEL is a built-in or installed name,
                               or your own: --model package.module:Class or --model path/to/file.py:Class
    aevb resume RUN_DIR        continue an interrupted fit from its last checkpoint
    aevb eval RUN_DIR          test ELBO, importance-weighted log-likelihood (and bits/dim) of a run
    aevb sample RUN_DIR        draw from a run's model into a PNG (or .npy/.npz arrays)
    aevb diagnose RUN_DIR      how far inference is from exact: amortization and approximation gaps, collapse
    aevb report RUN_DIR...     a report of finished runs (Markdown and HTML): numbers, E-step, settings, figures
    aevb tour                  the main job: every model briefly, on data that ships with the project, and a report
    aevb reproduce EXP|all     the tutorial's experiments with its settings, and a report

Errors in the user's input print one line, ``aevb: error: ...``, and exit with code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import aevb
from aevb.arguments import (MAX_IWAE_SAMPLES, MAX_SAMPLES, LocalEStep, draws, epochs_scale, for_terminal, local_steps,
                            non_negative_int, output_folder, positive_float, positive_int, positive_iwae_samples,
                            random_seed, sample_count, thread_count)
from aevb.errors import Interrupted, OtherRankFailed, Terminated, UsageError
from aevb.reproduce import DIAGNOSIS, EXPERIMENTS


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with bad flags reported on one line (no usage dump) and no guessing of abbreviated flags."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="aevb", description=for_terminal(__doc__),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"aevb {aevb.__version__}")
    # not required here, so that a flag the parser does not know is named before a missing command (parse_command)
    commands = parser.add_subparsers(dest="command", parser_class=ArgumentParser)
    commands.add_parser("fit", help="fit a model (aevb fit --help lists them)", add_help=False)

    again = commands.add_parser("resume", help="continue an interrupted fit from its last checkpoint",
                                description="Continue the interrupted fit in RUN_DIR from its last checkpoint, with "
                                            "the flags it was started with; a finished run is not fitted again.")
    again.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="an interrupted (or finished) run directory")
    add_summary_arguments(again)
    again.set_defaults(handler=resume_command)

    evaluate = commands.add_parser("eval", help="test ELBO, IWAE log-likelihood (and bits/dim) of a run")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    evaluate.add_argument("--iwae", type=positive_iwae_samples, default=1000, metavar="K",
                          help=f"importance samples per test example, at most {MAX_IWAE_SAMPLES:,} (default 1000)")
    evaluate.add_argument("--refine", type=local_steps, default=0, metavar="N",
                          help="also the test ELBO after N local E-steps from the amortized q, and the IWAE "
                               "bound with that refined q as proposal (semi-amortized inference; aevb diagnose "
                               "says more) (default 0: none)")
    evaluate.add_argument("--seed", type=random_seed, default=None,
                          help="random seed of the evaluation's draws, 0 to 2^32 - 1 (default: the run's, with which "
                               "the numbers are the fit's own; another gives independent estimates of the same bounds)")
    add_threads_argument(evaluate)
    add_summary_arguments(evaluate)
    evaluate.set_defaults(handler=eval_command)

    diagnose = commands.add_parser(
        "diagnose", help="how far inference is from exact: amortization and approximation gaps, posterior collapse",
        description="On a seeded subset of a run's test set: log p(x), the ELBO of the amortized q_phi(z|x) and of "
                    "q*, the best of its family for each example (found by local E-steps from q_phi), the gaps "
                    "log p(x) - ELBO[q*] (approximation) and ELBO[q*] - ELBO[q_phi] (amortization) with standard "
                    "errors, and posterior collapse: KL per latent dimension, active units, I(x; z). Writes "
                    "RUN_DIR/diagnostics.json and RUN_DIR/diagnostics.png.")
    diagnose.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    diagnose.add_argument("--examples", type=positive_int, default=1000, metavar="N",
                          help="test examples, drawn with --seed (default 1000; all if the test set is smaller)")
    diagnose.add_argument("--iwae", type=positive_iwae_samples, default=5000, metavar="K",
                          help=f"importance samples of the log p(x) estimate where it is not exact, at most "
                               f"{MAX_IWAE_SAMPLES:,} (default 5000)")
    defaults = LocalEStep()
    diagnose.add_argument("--steps", type=local_steps, default=defaults.steps,
                          help=f"local E-steps per example (Adam) (default {defaults.steps})")
    diagnose.add_argument("--samples", type=draws, default=defaults.samples,
                          help=f"draws of z per example for each local E-step's gradient (default {defaults.samples})")
    diagnose.add_argument("--lr", type=positive_float, default=defaults.lr,
                          help=f"the local E-steps' initial learning rate, decayed to 0 (cosine) "
                               f"(default {defaults.lr})")
    diagnose.add_argument("--eval-samples", type=draws, default=defaults.eval_samples, metavar="S",
                          help=f"draws per example for the ELBOs of q_phi and q* (default {defaults.eval_samples})")
    add_seed_argument(diagnose)
    add_threads_argument(diagnose)
    add_summary_arguments(diagnose)
    diagnose.set_defaults(handler=diagnose_command)

    sample = commands.add_parser("sample", help="draw from a run's model into a PNG, or into .npy/.npz arrays")
    sample.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    sample.add_argument("--n", type=sample_count, default=30,
                        help=f"samples (per class for a conditional model without --label), at most {MAX_SAMPLES} "
                             "(default 30)")
    sample.add_argument("--label", type=int, default=None, help="the class y to draw x ~ p(x|y) for (conditional models)")
    sample.add_argument("--out", type=Path, default=None,
                        help="a .png figure, or the samples as arrays: .npy (x) or .npz (x, and y for a conditional "
                             "model) (default RUN_DIR/samples.png, replaced at each call); an existing file is "
                             "not replaced without --overwrite")
    sample.add_argument("--overwrite", action="store_true", help="replace the file --out names if it exists")
    add_seed_argument(sample)
    add_threads_argument(sample)
    add_summary_arguments(sample, progress=False)
    sample.set_defaults(handler=sample_command)

    report = commands.add_parser(
        "report", help="a report of finished runs (Markdown and HTML): numbers, ELBO per epoch, E-step, figures",
        description="Write report.md and a self-contained report.html of finished runs, your own model's as ours: "
                    "what each fitted, its numbers (several runs' side by side), its ELBO per epoch, its E-step "
                    "diagnosis where aevb diagnose wrote one, its settings and its figures. A report of one run is "
                    "written into it; name the folder of a report of several with --out.")
    report.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="a finished run directory, or a folder of them (e.g. the --out of aevb tour)")
    report.add_argument("--out", type=Path, default=None,
                        help="the folder to write report.md and report.html into (default: the run, where one run "
                             "directory is named)")
    add_summary_arguments(report, progress=False)
    report.set_defaults(handler=report_command)

    tour = commands.add_parser("tour", help="the main job: every model briefly, on embedded data, and a report",
                               description="Fit every experiment of the tutorial briefly on data that ship with the "
                                           "project (no network), then write OUT/report.html and OUT/report.md.")
    add_output_arguments(tour, default_out=Path("runs/tour"))
    add_seed_argument(tour)
    tour.add_argument("--quick", action="store_true", help="a tiny budget (seconds, not minutes), e.g. for tests")
    tour.set_defaults(handler=tour_command)

    again = commands.add_parser("reproduce", help="the tutorial's experiments with its settings, and a report",
                                description="Fit the tutorial's experiments with its settings into OUT/EXPERIMENT, then "
                                            "write OUT/report.html and OUT/report.md. Run again with the same --out, an "
                                            "interrupted reproduce continues where it stopped, inside an experiment "
                                            "from its last checkpoint (complete runs are kept).")
    again.add_argument("experiments", nargs="+", choices=[*EXPERIMENTS, "all"], metavar="EXPERIMENT",
                       help=f"all (the tutorial's), or some of {', '.join(EXPERIMENTS)} (vae-nll: a VAE on statically "
                            "binarized MNIST beside the literature's test NLL, not in the tutorial)")
    again.add_argument("--dataset", default="mnist",
                       help="data of the image experiments: mnist (the tutorial's), digits (offline) or idx:DIR (default mnist)")
    again.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (else $AEVB_DATA_DIR, else download)")
    again.add_argument("--epochs-scale", type=epochs_scale, default=1.0, metavar="F",
                       help="multiply the tutorial's training lengths by F, at most 100 (at least 1 epoch or step) "
                            "(default 1)")
    add_seed_argument(again)
    again.add_argument("--diagnose", type=non_negative_int, default=DIAGNOSIS.examples, metavar="N",
                       help=f"test examples of aevb diagnose after each fit, with K = {DIAGNOSIS.iwae} and "
                            f"{DIAGNOSIS.settings.steps} local E-steps (default {DIAGNOSIS.examples}; 0: none)")
    add_output_arguments(again, default_out=Path("runs/reproduce"))
    again.set_defaults(handler=reproduce_command)
    return parser


def add_output_arguments(parser: argparse.ArgumentParser, default_out: Path | None) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", type=output_folder, default=default_out,
                       help=f"run directory (default: {default_out or 'runs/MODEL-DATE-TIME'})")
    add_summary_arguments(group)


def add_summary_arguments(parser, progress: bool = True) -> None:
    """--json, and --no-progress where the command shows progress, on a parser or an argument group."""
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    if progress:
        parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=thread_count, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's, one per core)")


def add_seed_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=random_seed, default=0, help="random seed, 0 to 2^32 - 1 (default 0)")


FIT_HELP = """usage: aevb fit MODEL [flags]   or   aevb fit --model REF [flags]

Fit a latent variable model with AEVB into a run directory. MODEL is one of:
  {names}
or your own model (a subclass of aevb.model.LatentVariableModel, see docs/models.md), named by
  --model package.module:Class     an importable module
  --model path/to/file.py:Class    a file anywhere
or installed by a package under the entry-point group "aevb.models". `aevb fit MODEL --help` lists its flags:
data, schedule (joint, e-step, m-step, alternate:E,M), length, optimizer, evaluation, and one per field of
its config (e.g. --latent-dim).
"""


def parse_fit(argv: list[str]) -> argparse.Namespace:
    """``aevb fit [MODEL | --model REF] [flags]``: the model's own parser, built only for the model asked for."""
    from aevb import registry

    if not argv:
        raise UsageError("name a model: aevb fit MODEL [flags] or aevb fit --model REF [flags] (aevb fit --help lists "
                         "the models)")
    if argv[0] in ("-h", "--help"):
        print(FIT_HELP.format(names=", ".join(registry.names())))
        raise SystemExit(0)
    if "--model" in argv[:-1]:
        at = argv.index("--model")
        ref, flags = argv[at + 1], argv[:at] + argv[at + 2:]
    elif argv[0].startswith("--model="):
        ref, flags = argv[0].removeprefix("--model="), argv[1:]
    elif argv[0].startswith("-"):
        raise UsageError(f"name a model first: aevb fit MODEL [flags] or aevb fit --model REF [flags], not {argv[0]!r}")
    else:
        ref, flags = argv[0], argv[1:]
    from aevb import fitting

    cls = registry.resolve(ref)
    parser = fitting.fit_parser(cls, f"aevb fit {ref}", ArgumentParser)
    add_output_arguments(parser, default_out=None)
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out from its last checkpoint (the same flags); "
                             "a finished run there is not fitted again")
    args = parser.parse_args(flags)
    output = argparse.Namespace(**{k: vars(args).pop(k) for k in ("out", "json", "progress", "resume")})
    if output.resume and output.out is None:
        raise UsageError("--resume needs the --out of the run to continue")
    fitting.resolve_paths(args)
    output.out = output.out or Path("runs") / f"{cls.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    output.handler, output.cls, output.fit_args = fit_command, cls, args
    return output


def fit_command(args: argparse.Namespace) -> dict:
    from aevb import fitting

    return {**fitting.run_fit(args.cls, args.fit_args, args.out, args.progress, args.resume), "run_dir": str(args.out)}


def resume_command(args: argparse.Namespace) -> dict:
    from aevb import fitting

    fitting.run_status(args.run_dir)
    record = fitting.run_record(args.run_dir)
    cls = fitting.recorded_class(record, args.run_dir / "config.json")
    recorded = fitting.parse_recorded_args(cls, record, args.run_dir / "config.json")
    summary = fitting.run_fit(cls, recorded, args.run_dir, args.progress, resume=True)
    return {**summary, "run_dir": str(args.run_dir)}


def eval_command(args: argparse.Namespace) -> dict:
    from aevb import fitting
    from aevb.threads import torch_threads

    with torch_threads(args.threads):
        summary = fitting.evaluate_run(args.run_dir, args.iwae, args.refine, args.progress, args.seed)
    return {**summary, "run_dir": str(args.run_dir)}


def diagnose_command(args: argparse.Namespace) -> dict:
    from aevb import fitting
    from aevb.threads import torch_threads

    settings = LocalEStep(args.steps, args.samples, args.lr, args.eval_samples)
    with torch_threads(args.threads):
        result = fitting.diagnose_run(args.run_dir, args.examples, args.iwae, settings, args.seed, args.progress)
    return {**result, "run_dir": str(args.run_dir)}


def sample_command(args: argparse.Namespace) -> dict:
    from aevb import fitting
    from aevb.threads import torch_threads

    with torch_threads(args.threads):
        return fitting.sample_run(args.run_dir, args.out or args.run_dir / "samples.png", args.n, args.label,
                                  args.seed, overwrite=args.overwrite or args.out is None)


def report_command(args: argparse.Namespace) -> dict:
    from aevb import run_report

    command = " ".join(["aevb report", *map(str, args.run_dirs), *(["--out", str(args.out)] if args.out else [])])
    return run_report.write_runs_report(args.run_dirs, args.out, command)


def tour_command(args: argparse.Namespace) -> dict:
    """Every experiment afresh into ``OUT/<experiment>`` with the tour's budget, then the report."""
    from aevb import report, reproduce

    report.check_report_files(args.out)
    statuses = reproduce.run(reproduce.tour(args.quick, args.seed), args.out, args.progress, resume=False)
    command = f"aevb tour{' --quick' if args.quick else ''} --seed {args.seed}"
    return {"runs": statuses, **report.write_report(args.out, statuses, command)}


def reproduce_command(args: argparse.Namespace) -> dict:
    """The chosen experiments into ``OUT/<experiment>``, keeping complete ones, then the report."""
    from aevb import report, reproduce

    diagnosis = dataclasses.replace(reproduce.DIAGNOSIS, examples=args.diagnose) if args.diagnose else None
    planned = reproduce.plan(args.experiments, args.dataset, args.data_dir, args.epochs_scale, args.seed,
                             diagnosis=diagnosis)
    report.check_report_files(args.out)
    statuses = reproduce.run(planned, args.out, args.progress, resume=True)
    command = (f"aevb reproduce {' '.join(args.experiments)} --dataset {args.dataset} "
               f"--epochs-scale {args.epochs_scale:g} --seed {args.seed}")
    return {"runs": statuses, **report.write_report(args.out, statuses, command)}


def print_summary(summary: dict, indent: str = "") -> None:
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            print_summary(value, indent + "  ")
        elif isinstance(value, list):
            print(f"{indent}{key:<34} {len(value)} values (--json shows them)")
        else:
            print(f"{indent}{key:<34} {value:.4f}" if isinstance(value, float) else f"{indent}{key:<34} {value}")


def run_of(args: argparse.Namespace) -> Path | None:
    """The run directory a command writes (fit, resume), else None."""
    return {fit_command: getattr(args, "out", None), resume_command: getattr(args, "run_dir", None)}.get(args.handler)


def continuation(args: argparse.Namespace | None, when: str = "") -> str:
    """'; continue the run with aevb resume RUN' where the command left a run to resume, else ''."""
    run = run_of(args) if args is not None else None
    resumable = run is not None and (run / "aevb-run.json").is_file()
    return f"; {when + ', ' if when else ''}continue the run with aevb resume {run}" if resumable else ""


def compile_error(error: Exception) -> bool:
    """Whether ``error`` comes from torch.compile (which only ``--compile`` runs)."""
    dynamo = sys.modules.get("torch._dynamo.exc")
    return dynamo is not None and isinstance(error, dynamo.TorchDynamoException)


def terminate(signum: int, frame) -> None:
    raise Terminated


def parse_command(argv: list[str]) -> argparse.Namespace:
    """The command line of every command but ``fit`` (``parse_fit``): one command is required."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("the following arguments are required: command")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    torchrun = "WORLD_SIZE" in os.environ  # set by torchrun, for every world size
    reporting = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 reports
    # SIGTERM as SIGINT is: an exception, reported in one line (training installs its own handlers, which stop it
    # at a step boundary); outside the main thread signals are left as they are
    sigterm = signal.signal(signal.SIGTERM, terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        if torchrun:
            join_processes(argv)
        args = parse_fit(argv[1:]) if argv[:1] == ["fit"] else parse_command(argv)
        summary = args.handler(args)
    except UsageError as e:
        if reporting or not getattr(e, "agreed", False):
            print(f"aevb: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        name = "SIGINT" if e.signal == signal.SIGINT else "SIGTERM" if e.signal == signal.SIGTERM else f"signal {e.signal}"
        if reporting:
            then = (f"; the run keeps a checkpoint: continue it with aevb resume {run_of(args)}" if run_of(args)
                    else "; run the same command again to continue where it stopped"
                    if args.handler is reproduce_command else "")
            print(f"aevb: interrupted by {name} after step {e.step}{then}", file=sys.stderr)
        return 128 + e.signal
    except (KeyboardInterrupt, Terminated) as e:
        by = " by SIGTERM" if isinstance(e, Terminated) else ""
        if reporting:
            print(f"aevb: interrupted{by}" + continuation(args if "args" in locals() else None), file=sys.stderr)
        return 128 + (signal.SIGTERM if by else signal.SIGINT)
    except OSError as e:  # the machine's, not aevb's: a full disk, a file it may not write
        if e.filename is None:
            raise
        if reporting:
            print(f"aevb: error: {e.filename}: {e.strerror}" + continuation(args if "args" in locals() else None,
                                                                             "once that is fixed"), file=sys.stderr)
        return 2
    except OtherRankFailed as e:  # that rank reports its own error; rank 0 names it
        if reporting:
            print(f"aevb: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not compile_error(e):
            raise
        print(f"aevb: error: --compile failed: {str(e).strip().splitlines()[0]}; run without --compile", file=sys.stderr)
        return 2
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
        if torchrun:
            from aevb import distributed

            distributed.finish()
    if not reporting:
        return 0
    for warning in summary.get("warnings", []):
        print(f"aevb: warning: {warning}", file=sys.stderr)
    try:
        print_summary(summary)
        if args.json:
            print(json.dumps(summary))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (e.g. head) has read what it wanted; the work is done and written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's advice: no write at exit either
    return 0


def join_processes(argv: list[str]) -> None:
    """Under torchrun: join the process group for ``fit`` and ``resume``, the commands that train on several
    processes (on one too, which then runs the collectives of several); any other command is one process's work,
    refused in one line on several."""
    if argv[:1] not in (["fit"], ["resume"]):
        if int(os.environ["WORLD_SIZE"]) == 1:
            return
        error = UsageError(f"aevb {argv[0] if argv else ''} runs in one process; under torchrun only fit and resume "
                           "train on several: run it without torchrun")
        error.agreed = True  # every rank refuses alike: rank 0 says so
        raise error
    from aevb import distributed

    distributed.init_from_environment()


if __name__ == "__main__":
    sys.exit(main())
