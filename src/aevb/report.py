"""Reports: ``report.md`` and a self-contained ``report.html``, of a tour or reproduce folder, or of any runs.

``aevb report RUN_DIR...`` reports any finished runs, a user's own model's among them: what each fitted, its numbers
(those of several runs side by side), its ELBO per epoch, its E-step diagnosis where ``aevb diagnose`` wrote one,
its settings, and its figures.

For every experiment of a tour or reproduce folder with a complete run in the folder: what it fitted, in a sentence
generated from the run's own settings; our numbers, beside the source's only where the settings are comparable
(otherwise the differences, and the command that runs the source's setting); a verdict by a stated rule; the test
ELBO per epoch; its E-step diagnosis (``aevb diagnose``: the approximation and amortization gaps, also side by side
for all experiments); the run's settings, seed, device, time taken and software versions; and its figures. The HTML
embeds the figures as data URIs, so it needs no network and no other file; the Markdown links them relatively. The
report is built as a list of blocks, and each format renders the same blocks.
"""
from __future__ import annotations

import base64
import html
import json
import math
import mimetypes
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from aevb import runs
from aevb.errors import UsageError
from aevb.reproduce import EXPERIMENTS, Experiment, Published, Settings, complete, plural
from aevb.runs import is_record, read_json, read_jsonl, software_versions, write_atomically

IMAGE_SUFFIXES = (".png", ".gif", ".jpg", ".svg")
CAPTIONS = {"diagnostics.png": "The E-step (aevb diagnose): log p(x) - ELBO[q_phi], split into the approximation and "
                               "amortization gaps where the run's local E-step is covered, and, where the run has "
                               "them, the ELBO against local E-steps and KL(q(z_d|x) || p(z_d)) per latent dimension."}
VERDICT_RULE = ("Verdicts: a row is *reproduced* when ours is within the stated tolerance of the source's number (or the "
                "source's statement holds of ours), *better* or *worse* beyond it; an experiment is worse if any of its "
                "judged rows is, reproduced if all are, better otherwise; *not comparable* when its settings or data "
                "differ from the source's, or its run is shorter or longer than the source's for a number stated at the "
                "end of training.")
STATUS = {"fitted": "fitted now", "kept": "kept: complete from an earlier run with the same settings",
          "unavailable": "not run: its model is not installed", "earlier": "from an earlier run (not requested this time)"}


@dataclass
class Heading:
    level: int
    text: str
    anchor: str | None = None  # a link target for the table of contents


@dataclass
class Text:
    text: str


@dataclass
class Code:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    path: Path
    caption: str


Block = Heading | Text | Code | Bullets | Table | Figure


def number(value) -> str:
    if value is None:
        return "—"
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{seconds:.1f} s" if seconds < 60 else f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {s:02d} s"


def at_epoch(history: list[dict], epoch: int, key: str = "test_elbo"):
    """``key`` of the last record of ``epoch`` that has it, or None."""
    return next((r[key] for r in reversed(history) if r["epoch"] == epoch and key in r), None)


def run_settings(run_dir: Path, summary: dict) -> Settings:
    """What a run fitted: its flags and model config (config.json), with the values the fit resolved."""
    record = json.loads((run_dir / "config.json").read_text())
    resolved = {k: summary[k] for k in ("dataset", "transform", "schedule", "epochs", "steps") if k in summary}
    return {**record["args"], **record["config"], **resolved}


def differences(experiment: Experiment, flags: dict[str, str]) -> list[str]:
    """Every setting of the run, other than its length, that is not the source's (data first)."""
    notes = []
    if "--dataset" in experiment.settings and flags.get("--dataset") != experiment.settings["--dataset"]:
        notes.append(f"data: {flags.get('--dataset')} here, {experiment.settings['--dataset']} in {experiment.source}")
    notes += [f"`{flag} {flags.get(flag, '(default)')}` here, `{flag} {value}` in {experiment.source}"
              for flag, value in experiment.settings.items()
              if flag not in ("--dataset", experiment.length) and flags.get(flag) != value]
    return notes


def length_difference(experiment: Experiment, flags: dict[str, str]) -> str | None:
    flag, value = experiment.length, experiment.settings[experiment.length]
    return None if flags.get(flag) == value else f"`{flag} {flags.get(flag)}` here, `{flag} {value}` in {experiment.source}"


def reproduce_command(name: str, experiment: Experiment) -> str:
    return f"aevb reproduce {name}" + (" --data-dir DIR" if "--dataset" in experiment.settings else "")


def comparable(published: Published, different: list[str], length: str | None) -> bool:
    return not different and not (published.final and length)


def overall_verdict(verdicts: list[str | None], different: list[str]) -> str:
    """The experiment's verdict from its rows' (VERDICT_RULE)."""
    judged = [v for v in verdicts if v not in (None, "not comparable")]
    if different or not judged:
        return "not comparable" if different or "not comparable" in verdicts else "not judged (no number with a rule)"
    return "worse" if "worse" in judged else "reproduced" if set(judged) == {"reproduced"} else "better"


def run_summary(run_dir: Path, provenance: dict) -> dict:
    """A complete run's summary, with the bounds ``aevb reproduce`` evaluated after its fit."""
    return {**json.loads((run_dir / "summary.json").read_text()), **provenance.get("evaluations", {})}


def experiment_blocks(name: str, experiment: Experiment, run_dir: Path, provenance: dict,
                      summary: dict) -> tuple[list[Block], str]:
    """The experiment's section of the report, and its verdict, from the run's ``run_summary``."""
    history = read_jsonl(run_dir / "metrics.jsonl")
    flags = provenance["flags"]
    different, length = differences(experiment, flags), length_difference(experiment, flags)
    rows, verdicts = [], []
    for p in experiment.published:
        ours = p.ours(summary, history)
        if comparable(p, different, length):
            verdict = p.verdict(ours)
            rows.append([p.quantity, number(ours), p.tutorial, verdict or "—", p.rule])
        else:  # neither the source's number nor its rule (which holds the number) stands beside ours
            verdict = "not comparable" if p.verdict(ours) is not None else None
            rows.append([p.quantity, number(ours), "not comparable", verdict or "—", "—"])
        verdicts.append(verdict)
    verdict = overall_verdict(verdicts, different)
    blocks: list[Block] = [
        Heading(2, f"{name}: {experiment.title} ({experiment.origin})", anchor=name),
        Text(experiment.describe(run_settings(run_dir, summary))),
        Text(f"Verdict: **{verdict}**."),
        Heading(3, f"Our numbers and {experiment.source}'s"),
        Table(["quantity", "ours", f"{experiment.source} ({experiment.section})", "verdict", "rule"], rows),
    ]
    reasons = different + ([length] if length else [])
    if reasons:
        blocks += [Text(f"Where this run differs from {experiment.source} (its numbers stand beside ours only where "
                        f"none of these matter; `{reproduce_command(name, experiment)}` runs its setting):"),
                   Bullets(reasons)]
    if experiment.notes:
        blocks += [Text("Notes:"), Bullets(list(experiment.notes))]
    if experiment.curve:
        last = history[-1]["epoch"] if history else 0
        epochs = sorted(set(experiment.curve) | {last})
        key = experiment.curve_key
        header = ["epoch", f"ours (`{key}`)"] + ([] if different else [f"{experiment.source} ({experiment.section})"])
        table = [[str(e), number(at_epoch(history, e, key)) if e <= last else f"not reached (ran {last})"]
                 + ([] if different else [number(experiment.curve.get(e))]) for e in epochs]
        blocks += [Heading(3, "Test ELBO per epoch"), Table(header, table),
                   Text("Each a one-sample estimate drawn during training; the test ELBO after training, above, is "
                        "drawn afresh (seeded), so it differs from the last epoch's by that estimate's noise.")]
    diagnosis = read_diagnosis(run_dir)
    if diagnosis:
        blocks += [Heading(3, "The E-step"),
                   *e_step_blocks(diagnosis, provenance.get("diagnosis"), summary.get("evidence", "log p(x)"))]
    versions = provenance["versions"]
    threads = summary.get("threads")
    blocks += [
        Heading(3, "Settings"),
        Code(f"{provenance['command']} --out {run_dir}"),
        Table(["setting", "value"], [
            ["seed", flags["--seed"]],
            ["trained", f"epochs: {summary.get('epochs')}, gradient steps: {summary.get('steps')}"],
            ["device", f"{summary.get('device', '—')}" + (f", {threads} torch thread{'s' * (threads != 1)}"
                                                          if threads is not None else "")],
            ["training time", duration(summary["train_seconds"]) if "train_seconds" in summary else "—"],
            ["wall time (training, evaluation, figures)", duration(provenance["wall_seconds"])],
            ["finished", provenance["finished"]],
            ["software", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "device")],
        ]),
        Heading(3, "Figures"),
    ]
    images = sorted(p.name for p in run_dir.iterdir() if p.suffix in IMAGE_SUFFIXES)
    ordered = [f for f in experiment.figures if f in images] + [f for f in images if f not in experiment.figures]
    blocks += [Figure(run_dir / f, experiment.figures.get(f, CAPTIONS.get(f, f))) for f in ordered]
    missing = [f for f in experiment.figures if f not in images]
    if missing:
        blocks.append(Text(f"Not written by this run: {', '.join(missing)}."))
    return blocks, verdict


def read_diagnosis(run_dir: Path) -> dict | None:
    """The run's diagnostics.json (``aevb diagnose``), or None."""
    path = run_dir / "diagnostics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def with_se(result: dict, key: str) -> str:
    """``key``'s value ± its standard error (``key_se``), the value alone where there is none (one example, or a
    diagnosis written before aevb gave one), or 'not covered'."""
    if key not in result:
        return "not covered"
    se = result.get(key + "_se")
    return f"{number(result[key])}" + (f" ± {number(se)}" if se is not None else "")


def e_step_blocks(result: dict, command: str | None, evidence: str = "log p(x)") -> list[Block]:
    """What ``aevb diagnose`` found for one run: the sentence saying how, and its numbers (± standard errors);
    ``evidence`` is what its bounds are of (``log p(x | y)`` for a model given labels y)."""
    steps = result["local_e_step"]
    how = (f"{steps['steps']} local E-steps (Adam from learning rate {steps['lr']:g}, cosine decay, {steps['samples']} "
           f"draws per gradient) from q_phi for each example, and ELBOs from {steps['eval_samples']} draws"
           + (f"; {result['q_phi_kept']} of the examples kept q_phi (their last iterate's estimate was not higher)"
              if "q_phi_kept" in result else "")
           if isinstance(steps, dict) else f"local E-steps {steps}")
    mutual = (f"{with_se(result, 'mutual_information')} (Monte Carlo; at least 0, at most log N = "
              f"{number(result['mutual_information_bound'])})"
              if "mutual_information" in result else "not covered (q(z|x) is not one distribution per example)")
    return [
        Text(f"On {result['examples']} test examples: {evidence} {result['log_evidence']}; {how}."
             + (f" Command: `{command}`." if command else "")),
        Table(["quantity (nats per example)", "mean ± standard error"], [
            [evidence, with_se(result, "log_px")],
            ["ELBO[q_phi] (amortized)", with_se(result, "elbo_amortized")],
            ["ELBO[q*] (optimized per example)", with_se(result, "elbo_optimal")],
            [f"approximation gap {evidence} - ELBO[q*]", with_se(result, "approximation_gap")],
            ["amortization gap ELBO[q*] - ELBO[q_phi]", with_se(result, "amortization_gap")],
            [f"total gap {evidence} - ELBO[q_phi]", with_se(result, "total_gap")],
            ["active units (Cov_x E[z_d|x] > 0.01)", f"{result['active_units']} of {result['latent_dim']}"],
            ["I(x; z)", mutual],
        ]),
    ]


GIVEN = {"y": "its label y", "c": "its context c"}  # what a conditional model's data are given


def given(evidence: str) -> str:
    """What a model whose bounds are on ``evidence`` (``evaluation.evidence_name``) is given: '' for none."""
    return f"given {GIVEN.get(evidence.split('| ')[1].rstrip(')'), 'a context')}" if "|" in evidence else ""


def what_of(evidence: str) -> str:
    """What a bound on ``evidence`` is of, in words: '' for log p(x)."""
    return " and ".join(filter(None, ["of the standardized data u" * evidence.startswith("log p(u"), given(evidence)]))


def e_step_section(out: Path, diagnoses: dict[str, dict], evidence: dict[str, str],
                   noun: str = "experiment") -> list[Block]:
    """The gaps of every diagnosed run (name -> its diagnosis, and what its bounds are of) side by side: a table
    and a figure (written to out/e_step_gaps.png); ``noun`` says what each run is (an experiment of a tour, or a
    run)."""
    from aevb import plotting

    described = {name: of for name, of in evidence.items() if name in diagnoses and what_of(of)}
    figure = plotting.gap_comparison(diagnoses, out / "e_step_gaps.png")
    rows = [[name, str(r["examples"]), with_se(r, "log_px"), with_se(r, "elbo_amortized"),
             with_se(r, "approximation_gap"), with_se(r, "amortization_gap"), f"{r['active_units']} of {r['latent_dim']}"]
            for name, r in diagnoses.items()]
    return [
        Heading(2, f"The E-step across {noun}s", anchor="e-step"),
        Text("How far each fitted model's amortized posterior q_phi is from exact (Cremer, Li & Duvenaud 2018): the "
             "approximation gap is the family's (the best member for each example, q*, against log p(x)), the "
             f"amortization gap the encoder's (q_phi against q*). Each {noun}'s section says how they were "
             "computed." + "".join(f" For {name}, {what_of(of)}, they are of {of} and its ELBO."
                                   for name, of in described.items())),
        Table([noun, "examples", "log p(x)", "ELBO[q_phi]", "approximation gap", "amortization gap",
               "active units"], rows),
        Figure(figure, f"log p(x) - ELBO[q_phi] per {noun}, split into the approximation gap (blue) and the "
                       "amortization gap (orange); hatched where the model's local E-step is not covered."),
    ]


def report_blocks(out: Path, statuses: dict[str, str], command: str) -> list[Block]:
    """The report of the runs in ``out``: those of ``statuses``, then other complete experiments there."""
    statuses = {**statuses, **{n: "earlier" for n in EXPERIMENTS if n not in statuses and complete(out / n)}}
    rows, sections, contents, seconds, diagnoses, evidence = [], [], [], 0.0, {}, {}
    for name in [n for n in EXPERIMENTS if n in statuses]:
        experiment, provenance = EXPERIMENTS[name], complete(out / name)
        if provenance is None:
            rows.append([name, experiment.title, experiment.origin, STATUS[statuses[name]], "—", "—", "—"])
            continue
        summary = run_summary(out / name, provenance)
        headline = ", ".join(f"`{k}` {number(summary[k])}" for k in experiment.headline if summary.get(k) is not None)
        seconds += provenance["wall_seconds"] if statuses[name] == "fitted" else 0.0
        blocks, verdict = experiment_blocks(name, experiment, out / name, provenance, summary)
        rows.append([name, experiment.title, experiment.origin, STATUS[statuses[name]],
                     duration(provenance["wall_seconds"]), headline, verdict])
        contents.append(f"[{name}: {experiment.title}](#{name})")
        sections += blocks
        diagnosis = read_diagnosis(out / name)
        if diagnosis:
            diagnoses[name], evidence[name] = diagnosis, summary.get("evidence", "log p(x)")
    e_step = e_step_section(out, diagnoses, evidence) if diagnoses else []
    return [
        Heading(1, f"aevb: the tutorial's experiments ({command})"),
        Text(f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `{command}` into {out}. The tutorial is Yang, "
             "'Training Latent Variable Models with Auto-encoding Variational Bayes: A Tutorial' (arXiv 2208.07818); "
             "section numbers are its. Numbers are per test example in nats unless stated."),
        Heading(2, "Contents", anchor="contents"),
        Bullets(["[What ran](#what-ran)", *(["[The E-step across experiments](#e-step)"] if e_step else []), *contents,
                 "[Software](#software)"]),
        Heading(2, "What ran", anchor="what-ran"),
        Table(["experiment", "what", "source", "status", "wall time", "headline numbers", "verdict"], rows),
        Text(f"Fitted now: {duration(seconds)} in all. {VERDICT_RULE}"),
        *e_step,
        *sections,
        Heading(2, "Software", anchor="software"),
        Table(["", "version"], [[k, v] for k, v in software_versions().items()]),
    ]


def markdown(blocks: list[Block], base: Path) -> str:
    """GitHub-flavoured Markdown; figures are linked relative to ``base`` (the report's folder)."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append((f'<a id="{b.anchor}"></a>\n\n' if b.anchor else "") + f"{'#' * b.level} {b.text}")
        elif isinstance(b, Text):
            parts.append(b.text)
        elif isinstance(b, Code):
            parts.append(f"```\n{b.text}\n```")
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Table):
            lines = [b.header, ["---"] * len(b.header), *b.rows]
            parts.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines))
        else:
            parts.append(f"![{b.caption}]({Path(os.path.relpath(b.path, base)).as_posix()})\n\n*{b.caption}*")
    return "\n\n".join(parts) + "\n"


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222;
       line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2.2em; border-bottom: 2px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 .2em; } pre code { padding: 0; }
pre { background: #f5f5f5; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
figure { margin: 1.2em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; }
"""


def inline(text: str) -> str:
    """Escaped text, with Markdown's `code` spans as <code>, **strong** as <strong> and in-page [links](#anchor)."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\[([^\]]+)\]\(#([\w-]+)\)", r'<a href="#\2">\1</a>', text)


def to_html(blocks: list[Block], title: str) -> str:
    """One HTML page with its style inline and every figure embedded as a data URI."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            anchor = f' id="{b.anchor}"' if b.anchor else ""
            parts.append(f"<h{b.level}{anchor}>{inline(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            parts.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Code):
            parts.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{inline(c)}</th>" for c in b.header)
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            parts.append(f'<figure><img src="{data_uri(b.path)}" alt="{html.escape(b.caption)}">'
                         f"<figcaption>{inline(b.caption)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def write_report(out: Path, statuses: dict[str, str], command: str) -> dict[str, str]:
    """Write ``out/report.md`` and ``out/report.html``, each whole or not at all; returns their paths."""
    blocks = report_blocks(out, statuses, command)
    paths = {"report_md": out / "report.md", "report_html": out / "report.html"}
    write_atomically(paths["report_md"], lambda p: p.write_text(markdown(blocks, out)))
    write_atomically(paths["report_html"], lambda p: p.write_text(to_html(blocks, f"aevb report: {command}")))
    return {k: str(p) for k, p in paths.items()}


# The files a report writes into its folder, and the mark each carries when aevb wrote it
REPORT_MARKS = {"report.md": b"# aevb: ", "report.html": b"<title>aevb report: ", "e_step_gaps.png": None}


def check_report_files(out: Path, names: tuple[str, ...] = tuple(REPORT_MARKS), old_figures: bool = True) -> None:
    """UsageError, before anything is fitted, where ``out`` holds a file of the report's ``names`` that aevb did not
    write (a link, or one without aevb's mark: the report's heading, the HTML title, the PNG's Software text; with
    ``old_figures``, an unmarked PNG beside aevb's report.md counts as an earlier aevb's)."""
    for name in names:
        path = out / name
        if (path.exists() or path.is_symlink()) and not written_by_aevb(path, old_figures):
            raise UsageError(f"--out {out} holds {name}, which aevb did not write and its report would replace; move "
                             "it or choose another --out")


def written_by_aevb(path: Path, old_figures: bool = True) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    mark = REPORT_MARKS[path.name]
    try:
        if mark is None:  # the figure: marked since aevb marks its PNGs, else written with the folder's report.md
            from PIL import Image

            from aevb import plotting

            with Image.open(path) as image:
                marked = image.info.get("Software") == plotting.SOFTWARE
            return marked or old_figures and written_by_aevb(path.with_name("report.md"))
        with path.open("rb") as f:
            return mark in f.read(1000)
    except (OSError, ValueError):  # unreadable, or not an image
        return False


# The report of any finished runs: aevb report RUN_DIR... ------------------------------------------------------------
QUANTITIES = {  # what the summary entries every fit writes are; a model's own entries are shown by their names
    "train_elbo": "training ELBO (the last epoch's mean, over the steps it ran)",
    "test_elbo": "test ELBO (one draw of z per example)",
    "iwae_log_likelihood": "test {evidence}, a lower bound: IWAE with K = {iwae_samples}",
    "test_log_evidence": "test {evidence}, exact (the model's log_evidence)",
    "bits_per_dim": "bits per dimension of the discrete data, an upper bound (from the dequantized data's {bound})",
    "log_evidence_offset": "log p(x) - log p(u) for the standardized data u: add it to a bound for the data's units",
}
SETTING_KEYS = {"model", "dataset", "transform", "schedule", "epochs", "steps", "evidence", "iwae_samples",
                "train_seconds", "device", "threads", "processes", "warnings", "estimator", "experiment"}  # how it ran
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
TEXTS: Kind = ("a list of texts", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
WHOLES: Kind = ("a list of whole numbers", lambda v: isinstance(v, list) and all(map(is_whole, v)))
WHOLE_OR_NULL: Kind = ("a whole number or null", lambda v: v is None or is_whole(v))
LOCAL_E_STEP: Kind = ("local E-step settings", is_local_e_step)

ARGS = {"seed": WHOLE, "batch_size": WHOLE, "lr": NUMBER}, {"lr_milestones": WHOLES, "lr_gamma": NUMBER,
                                                           "steps": WHOLE_OR_NULL, "clip_grad": NUMBER_OR_NULL}
SUMMARY = ({"model": TEXT, "epochs": WHOLE, "steps": WHOLE},
           {"train_seconds": SECONDS, "iwae_samples": WHOLE, "threads": WHOLE, "warnings": TEXTS, "evidence": TEXT,
            "device": TEXT, "dataset": TEXT, "transform": TEXT, "schedule": TEXT, "estimator": TEXT})
RECORD = {}, {"train_elbo": NUMBER_OR_NULL, "test_elbo": NUMBER_OR_NULL}
DIAGNOSIS = ({"examples": WHOLE, "log_evidence": TEXT, "local_e_step": LOCAL_E_STEP, "active_units": WHOLE,
              "latent_dim": WHOLE, "log_px": NUMBER, "elbo_amortized": NUMBER, "total_gap": NUMBER},
             {**{k: NUMBER for k in ("elbo_optimal", "approximation_gap", "amortization_gap", "mutual_information",
                                     "mutual_information_bound")},
              **{f"{k}_se": NUMBER_OR_NULL for k in ("log_px", "elbo_amortized", "total_gap", "elbo_optimal",
                                                     "approximation_gap", "amortization_gap", "mutual_information")},
              "q_phi_kept": WHOLE})
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
    from aevb import fitting

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
    from aevb import fitting

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
    threads = summary.get("threads")
    blocks += [
        Heading(3, "Settings"),
        Table(["setting", "value"], [
            *([f"`{k}`", shown(v)] for k, v in run.record["config"].items()),
            ["estimator", summary.get("estimator") or args.get("estimator") or "aevb (the default)"],
            ["gradient clipping", f"norm {args['clip_grad']:g}" if args.get("clip_grad") else "none"],
            ["device", f"{summary.get('device', '—')}" + (f", {plural(threads, 'torch thread')}"
                                                          if threads is not None else "")],
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
                      command: str = "aevb.report.write_runs_report") -> dict:
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
