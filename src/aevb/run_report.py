"""``aevb report RUN_DIR...``: a report of any finished runs, a user's own model's among them.

For each run, from its own files (config.json, summary.json, metrics.jsonl, diagnostics.json, its figures), each
checked first: what it fitted, in a sentence from its settings; its numbers (the generic ones in words, the model's
own by name); its ELBO per epoch; its E-step diagnosis where ``aevb diagnose`` wrote one; its settings; its figures.
Several runs' numbers, and their E-step gaps, stand side by side. It is rendered as ``aevb.report`` renders the
report of a tour: the same blocks, in ``report.md`` and a self-contained ``report.html``.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from aevb import fitting, runs
from aevb.errors import UsageError
from aevb.report import (CAPTIONS, IMAGE_SUFFIXES, REPORT_MARKS, Block, Bullets, Figure, Heading, Table, Text,
                         check_report_files, duration, e_step_blocks, e_step_section, given, markdown, number, to_html,
                         where_it_trained, written_by_aevb)
from aevb.reproduce import complete, plural
from aevb.runs import is_record, read_json, write_atomically


QUANTITIES = {  # what the summary entries every fit writes are; a model's own entries are shown by their names
    "train_elbo": "training ELBO (the last epoch's mean, over the steps it ran)",
    "test_elbo": "test ELBO (one draw of z per example)",
    "iwae_log_likelihood": "test {evidence}, a lower bound: IWAE with K = {iwae_samples}",
    "test_log_evidence": "test {evidence}, exact (the model's log_evidence)",
    "bits_per_dim": "bits per dimension of the discrete data, an upper bound (from the dequantized data's {bound})",
    "log_evidence_offset": "log p(x) - log p(u) for the standardized data u: add it to a bound for the data's units",
}
SETTING_KEYS = {"model", "dataset", "transform", "schedule", "epochs", "steps", "evidence", "iwae_samples",  # how it ran
                "train_seconds", "device", "threads", "compiled", "processes", "warnings", "estimator", "experiment"}
CURVE_ROWS = 10  # epochs shown in a run's table of the ELBO per epoch (the first, the last, and evenly between)
TOUR_HEADING = b"# aevb: the tutorial's experiments"  # the report of aevb tour and aevb reproduce


def is_whole(value) -> bool:
    return type(value) is int


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_local_e_step(value) -> bool:
    """aevb diagnose's local E-step settings, or the sentence saying why a model has none."""
    return isinstance(value, str) or (isinstance(value, dict) and is_number(value.get("lr"))
                                      and all(is_whole(value.get(k)) for k in ("steps", "samples", "eval_samples")))


Kind = tuple[str, Callable[[Any], bool]]  # what an entry must be, in words, and the test of it
WHOLE: Kind = ("a whole number", is_whole)
NUMBER: Kind = ("a number", is_number)
NUMBER_OR_NULL: Kind = ("a number or null", lambda v: v is None or is_number(v))
SECONDS: Kind = ("a number of seconds", lambda v: is_number(v) and 0 <= v < math.inf)
TEXT: Kind = ("text", lambda v: isinstance(v, str))
TRUE: Kind = ("true (absent where false)", lambda v: v is True)
TEXTS: Kind = ("a list of texts", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
WHOLES: Kind = ("a list of whole numbers", lambda v: isinstance(v, list) and all(map(is_whole, v)))
WHOLE_OR_NULL: Kind = ("a whole number or null", lambda v: v is None or is_whole(v))
LOCAL_E_STEP: Kind = ("local E-step settings", is_local_e_step)

ARGS = {"seed": WHOLE, "batch_size": WHOLE, "lr": NUMBER}, {"lr_milestones": WHOLES, "lr_gamma": NUMBER,
                                                           "steps": WHOLE_OR_NULL, "clip_grad": NUMBER_OR_NULL}
SUMMARY = ({"model": TEXT, "epochs": WHOLE, "steps": WHOLE},
           {"train_seconds": SECONDS, "iwae_samples": WHOLE, "threads": WHOLE, "warnings": TEXTS, "evidence": TEXT,
            "compiled": TRUE, "processes": WHOLE, "device": TEXT, "dataset": TEXT, "transform": TEXT, "schedule": TEXT,
            "estimator": TEXT})
RECORD = {}, {"train_elbo": NUMBER_OR_NULL, "test_elbo": NUMBER_OR_NULL}
DIAGNOSIS = ({"examples": WHOLE, "log_evidence": TEXT, "local_e_step": LOCAL_E_STEP, "active_units": WHOLE,
              "latent_dim": WHOLE, "log_px": NUMBER, "elbo_amortized": NUMBER, "total_gap": NUMBER},
             {**{k: NUMBER for k in ("elbo_optimal", "approximation_gap", "amortization_gap", "mutual_information",
                                     "mutual_information_bound")},
              **{f"{k}_se": NUMBER_OR_NULL for k in ("log_px", "elbo_amortized", "total_gap", "elbo_optimal",
                                                     "approximation_gap", "amortization_gap", "mutual_information")},
              "q_phi_kept": WHOLE, "warnings": TEXTS})
MARKER = {}, {"files": TEXTS}


def check_entries(path: Path, record, kinds: tuple[dict[str, Kind], dict[str, Kind]], advice: str,
                  what: str = "") -> None:
    """UsageError naming ``path`` where ``record`` (its JSON, or ``what`` part of it) is not a mapping holding each
    required entry of ``kinds`` (required, optional), and each entry it holds, of its kind."""
    required, optional = kinds
    if not isinstance(record, dict):
        raise UsageError(f"{path} is damaged ({what or 'it'} is not a mapping of names to values); {advice}")
    for key, (kind, test) in {**required, **optional}.items():
        if key not in record and key in required:
            raise UsageError(f"{path} is damaged ({what or 'it'} has no {key}); {advice}")
        if key in record and not test(record[key]):
            raise UsageError(f"{path} is damaged ({what + ' ' if what else ''}{key} is {record[key]!r:.40}, not "
                             f"{kind}); {advice}")


@dataclass
class FinishedRun:
    """What a report reads of a finished run directory, each file checked."""

    name: str  # as the report names it
    anchor: str  # its section's link target, unique in the report
    path: Path  # absolute
    record: dict  # config.json
    summary: dict
    history: list[dict]  # metrics.jsonl
    diagnosis: dict | None  # diagnostics.json, where aevb diagnose wrote one
    figures: list[Path]

    @property
    def evidence(self) -> str:
        return self.summary.get("evidence", "log p(x)")


def runs_named(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """The finished and the interrupted run directories ``paths`` name, absolute: each a run directory, or a folder
    of run directories (those in it, in name order). UsageError for a run named itself that is interrupted, a folder
    that holds no run, no finished run at all, or anything that is neither."""
    finished, interrupted = [], []
    for path in paths:
        if (path / runs.MARKER).is_file() or not path.is_dir() or not any(path.iterdir()):
            if fitting.run_status(path) != "complete":
                raise UsageError(f"{path} is an interrupted run, not a finished one; finish it with aevb resume "
                                 f"{path}, or leave it out")
            finished.append(path.resolve())
            continue
        inside = sorted(p for p in path.iterdir() if p.is_dir() and (p / runs.MARKER).is_file())
        if not inside:
            raise UsageError(f"{path} is neither a run directory nor a folder of them (no {runs.MARKER} in it or its "
                             "folders); name the --out of aevb fit")
        for run in inside:
            (finished if fitting.run_status(run) == "complete" else interrupted).append(run.resolve())
    if not finished:
        verb = "is" if len(interrupted) == 1 else "are"
        raise UsageError(f"no finished run to report: {', '.join(map(str, interrupted))} {verb} interrupted; finish "
                         "them with aevb resume RUN_DIR")
    return list(dict.fromkeys(finished)), list(dict.fromkeys(interrupted))


def read_run(name: str, anchor: str, path: Path) -> FinishedRun:
    """A finished run's files, each checked, its figures read: UsageError naming the one that is damaged."""
    record = fitting.run_record(path)
    check_entries(path / "config.json", record["args"], ARGS, runs.REFIT, what="args")
    summary = read_json(path / "summary.json")
    check_entries(path / "summary.json", summary, SUMMARY, runs.REFIT)
    if "iwae_log_likelihood" in summary and "iwae_samples" not in summary:
        raise UsageError(f"{path / 'summary.json'} is damaged (it has an IWAE bound but no iwae_samples); {runs.REFIT}")
    evaluations = (complete(path) or {}).get("evaluations", {})  # bounds aevb reproduce evaluated after the fit
    if not (isinstance(evaluations, dict) and all(map(is_number, evaluations.values()))):
        raise UsageError(f"{path / 'provenance.json'} is damaged (its evaluations are not numbers); {runs.REFIT}")
    summary = {**summary, **evaluations}
    if summary["model"] != record["model"]:
        raise UsageError(f"{path / 'summary.json'} is damaged (its model is {summary['model']!r:.60}, config.json's "
                         f"{record['model']!r:.60}); {runs.REFIT}")
    metrics = path / "metrics.jsonl"
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        raise UsageError(f"no {metrics}; {runs.REFIT}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{metrics} is damaged (not text); {runs.REFIT}") from None
    damaged = next((i for i, line in enumerate(lines, 1) if not is_record(line)), None)
    if damaged is not None:
        raise UsageError(f"{metrics} is damaged (line {damaged} is not a record of a step and epoch); {runs.REFIT}")
    history = [json.loads(line) for line in lines]
    for i, r in enumerate(history, 1):
        check_entries(metrics, r, RECORD, runs.REFIT, what=f"line {i}:")
    diagnosis = None
    if (path / "diagnostics.json").is_file():
        advice = f"diagnose the run again: aevb diagnose {path}"
        diagnosis = read_json(path / "diagnostics.json", advice)
        check_entries(path / "diagnostics.json", diagnosis, DIAGNOSIS, advice)
        if "mutual_information" in diagnosis and "mutual_information_bound" not in diagnosis:
            raise UsageError(f"{path / 'diagnostics.json'} is damaged (it has I(x; z) but no "
                             f"mutual_information_bound); {advice}")
    check_entries(path / runs.MARKER, read_json(path / runs.MARKER), MARKER, runs.REFIT)
    figures = sorted((p for p in path.iterdir() if p.suffix in IMAGE_SUFFIXES and p.name not in REPORT_MARKS),
                     key=lambda p: (p.name in runs.WRITTEN, p.name))  # the fit's own, then aevb sample's and diagnose's
    for figure in figures:
        try:
            figure.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {figure} ({e.strerror}) to show it in the report; make it readable, or move "
                             "it out of the run") from None
    return FinishedRun(name, anchor, path, record, summary, history, diagnosis, figures)


def run_names(paths: list[Path]) -> list[tuple[str, str]]:
    """Each run's name (its folder's name where those are distinct, else its path) and its section's anchor."""
    names = [p.name for p in paths]
    names = names if len(set(names)) == len(names) else [str(p) for p in paths]
    anchors: list[str] = []
    for name in names:
        anchor = "run-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "run")
        anchors.append(anchor if anchor not in anchors else f"{anchor}-{len(anchors) + 1}")
    return list(zip(names, anchors))


def shown(value) -> str:
    """A summary or config entry as a cell: a number or text, a short list's items, or how many values it holds."""
    if isinstance(value, list) and len(value) <= CURVE_ROWS and not any(isinstance(v, (list, dict)) for v in value):
        return ", ".join(map(number, value)) or "none"
    if isinstance(value, (list, dict)):
        return f"{len(value)} values"
    return number(value)


def quantity(key: str, summary: dict) -> str:
    """What a summary entry is: in words for the entries every fit writes, else its name."""
    if key not in QUANTITIES:
        return f"`{key}`"
    bound = "exact evidence" if "test_log_evidence" in summary else "IWAE bound"
    return QUANTITIES[key].format(**{"evidence": "log p(x)", **summary, "bound": bound})


def findings(summary: dict) -> list[str]:
    """The summary's entries that are results, not settings: the generic ones first, then the model's own."""
    return [k for k in QUANTITIES if k in summary] + [k for k in summary if k not in SETTING_KEYS | QUANTITIES.keys()]


def curve_epochs(epochs: list[int]) -> list[int]:
    """At most CURVE_ROWS of ``epochs``, evenly spread, the first and the last among them."""
    if len(epochs) <= CURVE_ROWS:
        return epochs
    return sorted({epochs[round(i * (len(epochs) - 1) / (CURVE_ROWS - 1))] for i in range(CURVE_ROWS)})


def length(args: dict, summary: dict) -> str:
    """How long a run trained: its epochs, or the steps it was given (the last in an epoch it may not have ended)."""
    if args.get("steps") is not None:
        return f"{plural(summary['steps'], 'gradient step')} (`--steps`; the last in epoch {summary['epochs']})"
    return f"{plural(summary['epochs'], 'epoch')} ({plural(summary['steps'], 'gradient step')})"


def run_section(run: FinishedRun) -> list[Block]:
    """A finished run's section: what it fitted, its numbers, its ELBO per epoch, its E-step, settings, figures."""
    summary, args, data = run.summary, run.record["args"], run.record["data"]
    decay = (f", multiplied by {args['lr_gamma']:g} after epochs {', '.join(map(str, args['lr_milestones']))}"
             if args.get("lr_milestones") else "")
    condition = f", {given(run.evidence)}" if given(run.evidence) else ""
    blocks: list[Block] = [
        Heading(2, f"{run.name}: {summary['model']}", anchor=run.anchor),
        Text(f"`{summary['model']}` fitted to {summary.get('dataset', '—')}{condition}: {data['kind']} of shape "
             f"{' × '.join(map(str, data['shape']))} (transform {summary.get('transform', '—')}), schedule "
             f"{summary.get('schedule', '—')}, {length(args, summary)} of batch {args['batch_size']}, Adam "
             f"{args['lr']:g}{decay}, seed {args['seed']}. Its bounds are of {run.evidence}, in nats per test "
             "example."),
        Table(["quantity", "value"], [[quantity(k, summary), shown(summary[k])] for k in findings(summary)]),
    ]
    if summary.get("warnings"):
        blocks += [Text("Warnings of the fit:"), Bullets(summary["warnings"])]
    records = {r["epoch"]: r for r in run.history}  # the last record of each epoch
    if records:
        keys = [k for k in ("train_elbo", "test_elbo") if any(k in r for r in records.values())]
        per_step = len(run.history) > len(records)  # a model that records every step (factor analysis)
        shown_epochs = curve_epochs(sorted(records))
        blocks += [Heading(3, "The ELBO per epoch"),
                   Table(["epoch", "step", *(f"{k} (its last step's)" if per_step else k for k in keys)],
                         [[str(e), str(records[e]["step"]), *(number(records[e].get(k)) for k in keys)]
                          for e in shown_epochs]),
                   Text(f"From {run.path / 'metrics.jsonl'}: "
                        + ("every epoch" if len(shown_epochs) == len(records) else
                           f"{len(shown_epochs)} of its {len(records)} epochs, the first and the last among them")
                        + (", each epoch's last record (this model records every step)" if per_step else "")
                        + "; the test ELBO is a one-draw estimate made during training.")]
    blocks.append(Heading(3, "The E-step"))
    blocks += (e_step_blocks(run.diagnosis, None, run.evidence) if run.diagnosis else
               [Text(f"Not diagnosed: `aevb diagnose {run.path}` measures the approximation and amortization gaps; "
                     "then write this report again.")])
    if run.diagnosis and run.diagnosis.get("warnings"):
        blocks += [Text("Warnings of the diagnosis:"), Bullets(run.diagnosis["warnings"])]
    blocks += [
        Heading(3, "Settings"),
        Table(["setting", "value"], [
            *([f"`{k}`", shown(v)] for k, v in run.record["config"].items()),
            ["estimator", summary.get("estimator") or args.get("estimator") or "aevb (the default)"],
            ["gradient clipping", f"norm {args['clip_grad']:g}" if args.get("clip_grad") else "none"],
            ["device", where_it_trained(summary)],
            ["training time", duration(summary["train_seconds"]) if "train_seconds" in summary else "—"],
            ["software", ", ".join(f"{k} {v}" for k, v in run.record["versions"].items()) or "not recorded"],
            ["every flag", f"{run.path / 'config.json'}"],
        ]),
        Heading(3, "Figures"),
    ]
    blocks += [Figure(p, CAPTIONS.get(p.name, p.stem.replace("_", " "))) for p in run.figures] or [Text("None.")]
    return blocks


def runs_report_blocks(finished: list[FinishedRun], interrupted: list[Path], out: Path, command: str) -> list[Block]:
    """The report of ``finished`` runs: an overview of their numbers side by side (where there are several), their
    E-step gaps side by side (where several are diagnosed), then each run's section."""
    title = f"run {finished[0].name}" if len(finished) == 1 and not interrupted else plural(len(finished), "run")
    blocks: list[Block] = [
        Heading(1, f"aevb: report of {title}"),
        Text(f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `{command}` into {out}. Numbers are per test example "
             "in nats unless stated; each comes from the run's summary.json, metrics.jsonl and diagnostics.json."),
    ]
    diagnosed = {r.name: r.diagnosis for r in finished if r.diagnosis}
    e_step = (e_step_section(out, diagnosed, {r.name: r.evidence for r in finished}, noun="run")
              if len(diagnosed) > 1 else [])
    if len(finished) > 1 or interrupted:
        shared = [k for k in findings(finished[0].summary)
                  if all(is_number(r.summary.get(k)) for r in finished)]
        rows = [[f"[{r.name}](#{r.anchor})", f"`{r.summary['model']}`", str(r.summary.get("dataset", "—")),
                 str(r.summary["epochs"]), r.evidence, str(r.summary.get("iwae_samples", "—")),
                 *(number(r.summary[k]) for k in shared)] for r in finished]
        rows += [[str(p), "—", "—", "—", "—", "—", *(f"interrupted: aevb resume {p}" if i == 0 else "—"
                                                    for i in range(len(shared)))] for p in interrupted]
        blocks += [Heading(2, "Contents", anchor="contents"),
                   Bullets(["[The runs side by side](#runs)",
                            *(["[The E-step across runs](#e-step)"] if e_step else []),
                            *(f"[{r.name}](#{r.anchor})" for r in finished)]),
                   Heading(2, "The runs side by side", anchor="runs"),
                   Table(["run", "model", "dataset", "epochs", "bounds of", "IWAE K", *(f"`{k}`" for k in shared)],
                         rows),
                   Text("Each run's section says what each number is.")]
    blocks += e_step
    for run in finished:
        blocks += run_section(run)
    return blocks


def report_folder(out: Path) -> None:
    """UsageError where ``out`` cannot hold a report of runs: not a folder, a run or a folder inside one (other than
    a finished run itself), or the folder of aevb tour's or reproduce's report, which would be replaced."""
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out {out} is a link to {os.readlink(out)}, which does not exist; choose another --out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    inside = next((p for p in out.resolve().parents if (p / runs.MARKER).is_file()), None)
    if inside is not None:
        raise UsageError(f"--out {out} is inside the run {inside}; write the report into the run itself or beside it")
    if (out / runs.MARKER).is_file() and runs.status(out) != "complete":
        raise UsageError(f"--out {out} is an interrupted run, which a report may not be written into; choose "
                         "another --out")
    report = out / "report.md"
    if report.is_file() and written_by_aevb(report) and report.read_bytes().startswith(TOUR_HEADING):
        raise UsageError(f"--out {out} holds the report of aevb tour or reproduce, which this one would replace; "
                         "choose another --out")


def write_runs_report(run_dirs: Sequence[str | Path], out: str | Path | None = None,
                      command: str = "aevb.run_report.write_runs_report") -> dict:
    """``out/report.md`` and ``out/report.html`` of the finished runs ``run_dirs`` name (``runs_named``), each whole
    or not at all (``aevb report``; ``command`` is what the report says wrote it); ``out`` defaults to the run where
    one is named. Every file is read and checked before anything is written, and the report's files written into a
    finished run are listed among its files. Returns the runs reported (name -> 'reported', or path -> 'interrupted'
    for a run of a named folder that is not finished) and the report's paths."""
    paths, out = [Path(p) for p in run_dirs], None if out is None else Path(out)
    finished, interrupted = runs_named(paths)
    if out is None:
        if len(paths) != 1 or not (paths[0] / runs.MARKER).is_file():
            raise UsageError("name the folder of a report of several runs with --out DIR")
        out = finished[0]
    report_folder(out)
    out = out.resolve()
    runs_read = [read_run(name, anchor, path) for (name, anchor), path in zip(run_names(finished), finished)]
    written = ("report.md", "report.html") + (("e_step_gaps.png",) if sum(bool(r.diagnosis) for r in runs_read) > 1
                                              else ())
    check_report_files(out, written, old_figures=False)
    if (out / runs.MARKER).is_file():
        check_entries(out / runs.MARKER, read_json(out / runs.MARKER), MARKER, runs.REFIT)
    out.mkdir(parents=True, exist_ok=True)
    blocks = runs_report_blocks(runs_read, interrupted, out, command)
    pages = {"report.md": markdown(blocks, out), "report.html": to_html(blocks, f"aevb report: {command}")}
    for name, page in pages.items():
        write_atomically(out / name, lambda p: p.write_text(page))
    if (out / runs.MARKER).is_file():
        runs.add_files(out, list(written))
    return {"runs": {**{r.name: "reported" for r in runs_read}, **{str(p): "interrupted" for p in interrupted}},
            "report_md": str(out / "report.md"), "report_html": str(out / "report.html")}
