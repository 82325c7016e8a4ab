"""The report of a tour or reproduce folder: ``report.md`` and a self-contained ``report.html``.

For every experiment with a complete run in the folder: our numbers beside the tutorial's (with its
section, and where our settings differ from its), the test ELBO per epoch beside its published curve,
the run's settings, seed, time taken and software versions, and its figures. The HTML embeds the
figures as data URIs, so it needs no network and no other file; the Markdown links them relatively.
The report is built as a list of blocks, and each format renders the same blocks.
"""
from __future__ import annotations

import base64
import html
import json
import mimetypes
import re
import time
from dataclasses import dataclass
from pathlib import Path

from aevb.reproduce import EXPERIMENTS, Experiment, complete, software_versions

IMAGE_SUFFIXES = (".png", ".gif", ".jpg", ".svg")
STATUS = {"fitted": "fitted now", "kept": "kept: complete from an earlier run with the same settings",
          "unavailable": "not run: its model is not installed", "earlier": "from an earlier run (not requested this time)"}


@dataclass
class Heading:
    level: int
    text: str


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


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def at_epoch(history: list[dict], epoch: int, key: str = "test_elbo"):
    """``key`` of the last record of ``epoch`` that has it, or None."""
    return next((r[key] for r in reversed(history) if r["epoch"] == epoch and key in r), None)


def differences(experiment: Experiment, flags: dict[str, str]) -> list[str]:
    """A note for every setting of the run that is not the tutorial's."""
    notes = [f"`{flag} {flags[flag]}` here, `{flag} {value}` in the tutorial" for flag, value in experiment.settings.items()
             if flags.get(flag) != value]
    if flags.get("--dataset", "mnist") != experiment.settings.get("--dataset", "mnist"):
        notes.append(f"Different data ({flags['--dataset']}, not the tutorial's MNIST): the numbers are not comparable "
                     "with its numbers, only the trends are.")
    return notes


def experiment_blocks(name: str, experiment: Experiment, run_dir: Path, provenance: dict) -> list[Block]:
    summary = json.loads((run_dir / "summary.json").read_text())
    history = read_history(run_dir)
    flags = provenance["flags"]
    blocks: list[Block] = [
        Heading(2, f"{name}: {experiment.title} (tutorial {experiment.section})"),
        Text(experiment.summary),
        Heading(3, "Our numbers beside the tutorial's"),
        Table(["quantity", "ours", f"tutorial ({experiment.section})"],
              [[p.quantity, number(p.ours(summary, history)), p.tutorial] for p in experiment.published]),
    ]
    notes = differences(experiment, flags) + list(experiment.notes)
    if notes:
        blocks += [Text("Notes, and where our settings differ from the tutorial's:"), Bullets(notes)]
    if experiment.curve:
        last = history[-1]["epoch"] if history else 0
        epochs = sorted(set(experiment.curve) | {last})
        blocks += [Heading(3, "Test ELBO per epoch"),
                   Table(["epoch", "ours", f"tutorial ({experiment.section})"],
                         [[str(e), number(at_epoch(history, e)) if e <= last else f"not reached (ran {last})",
                           number(experiment.curve.get(e))] for e in epochs])]
    versions = provenance["versions"]
    blocks += [
        Heading(3, "Settings"),
        Code(f"{provenance['command']} --out {run_dir}"),
        Table(["setting", "value"], [
            ["seed", flags["--seed"]],
            ["trained", f"epochs: {summary.get('epochs')}, gradient steps: {summary.get('steps')}"],
            ["device", versions["device"]],
            ["training time", duration(summary["train_seconds"]) if "train_seconds" in summary else "—"],
            ["wall time (training, evaluation, figures)", duration(provenance["wall_seconds"])],
            ["finished", provenance["finished"]],
            ["software", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "device")],
        ]),
        Heading(3, "Figures"),
    ]
    images = sorted(p.name for p in run_dir.iterdir() if p.suffix in IMAGE_SUFFIXES)
    ordered = [f for f in experiment.figures if f in images] + [f for f in images if f not in experiment.figures]
    blocks += [Figure(run_dir / f, experiment.figures.get(f, f)) for f in ordered]
    missing = [f for f in experiment.figures if f not in images]
    if missing:
        blocks.append(Text(f"Not written by this run: {', '.join(missing)}."))
    return blocks


def report_blocks(out: Path, statuses: dict[str, str], command: str) -> list[Block]:
    """The report of the runs in ``out``: those of ``statuses``, then other complete experiments there."""
    statuses = {**statuses, **{n: "earlier" for n in EXPERIMENTS if n not in statuses and complete(out / n)}}
    rows, sections, seconds = [], [], 0.0
    for name in [n for n in EXPERIMENTS if n in statuses]:
        experiment, provenance = EXPERIMENTS[name], complete(out / name)
        if provenance is None:
            rows.append([name, experiment.title, experiment.section, STATUS[statuses[name]], "—", "—"])
            continue
        summary = json.loads((out / name / "summary.json").read_text())
        headline = ", ".join(f"`{k}` {number(summary[k])}" for k in experiment.headline if summary.get(k) is not None)
        seconds += provenance["wall_seconds"] if statuses[name] == "fitted" else 0.0
        rows.append([name, experiment.title, experiment.section, STATUS[statuses[name]],
                     duration(provenance["wall_seconds"]), headline])
        sections += experiment_blocks(name, experiment, out / name, provenance)
    versions = software_versions()
    return [
        Heading(1, f"aevb: the tutorial's experiments ({command})"),
        Text(f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `{command}` into {out}. The tutorial is Yang, "
             "'Training Latent Variable Models with Auto-encoding Variational Bayes: A Tutorial' (arXiv 2208.07818); "
             "section numbers are its. Numbers are per test example in nats unless stated."),
        Heading(2, "What ran"),
        Table(["experiment", "what", "tutorial", "status", "wall time", "headline numbers"], rows),
        Text(f"Fitted now: {duration(seconds)} in all."),
        Heading(2, "Software"),
        Table(["", "version"], [[k, v] for k, v in versions.items()]),
        *sections,
    ]


def markdown(blocks: list[Block], base: Path) -> str:
    """GitHub-flavoured Markdown; figures are linked relative to ``base`` (the report's folder)."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"{'#' * b.level} {b.text}")
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
            parts.append(f"![{b.caption}]({b.path.relative_to(base).as_posix()})\n\n*{b.caption}*")
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
    """Escaped text, with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(blocks: list[Block], title: str) -> str:
    """One HTML page with its style inline and every figure embedded as a data URI."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{inline(b.text)}</h{b.level}>")
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
    """Write ``out/report.md`` and ``out/report.html``; returns their paths."""
    blocks = report_blocks(out, statuses, command)
    paths = {"report_md": out / "report.md", "report_html": out / "report.html"}
    paths["report_md"].write_text(markdown(blocks, out))
    paths["report_html"].write_text(to_html(blocks, f"aevb report: {command}"))
    return {k: str(p) for k, p in paths.items()}
