"""Reports: ``report.md`` and a self-contained ``report.html``, of a tour or reproduce folder (here) or of any runs
(``aevb.run_report``), built as a list of blocks that each format renders alike.

For every experiment of a tour or reproduce folder with a complete run in the folder: what it fitted, in a sentence
generated from the run's own settings; our numbers, beside the source's only where the settings are comparable
(otherwise the differences, and the command that runs the source's setting); a verdict by a stated rule; the test
ELBO per epoch; its E-step diagnosis (``aevb diagnose``: the approximation and amortization gaps, also side by side
for all experiments); the run's settings, seed, device, time taken and software versions; and its figures. The HTML
embeds the figures as data URIs, so it needs no network and no other file; the Markdown links them relatively.
"""
from __future__ import annotations

import base64
import html
import json
import mimetypes
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from aevb.errors import UsageError
from aevb.reproduce import EXPERIMENTS, Experiment, Published, Settings, complete, plural
from aevb.runs import read_jsonl, software_versions, write_atomically

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


def where_it_trained(summary: dict) -> str:
    """A run's device, torch threads, torch.compile and torchrun processes (those of its last invocation), from its
    summary."""
    threads, processes = summary.get("threads"), summary.get("processes")
    return ", ".join([summary.get("device", "—"), *([plural(threads, "torch thread")] if threads is not None else []),
                      *(["compiled with torch.compile"] if summary.get("compiled") else []),
                      *([f"{processes} process{'es' * (processes != 1)} (torchrun)"] if processes else [])])


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
    blocks += [
        Heading(3, "Settings"),
        Code(f"{provenance['command']} --out {run_dir}"),
        Table(["setting", "value"], [
            ["seed", flags["--seed"]],
            ["trained", f"epochs: {summary.get('epochs')}, gradient steps: {summary.get('steps')}"],
            ["device", where_it_trained(summary)],
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
