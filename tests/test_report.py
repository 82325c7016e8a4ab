"""``aevb tour`` and ``aevb reproduce`` as a user runs them, and the report they write."""
import base64
import json
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from aevb import plotting, report, reproduce, run_report
from aevb.cli import main
from aevb.report import number
from aevb.reproduce import EXPERIMENTS, TUTORIAL, Published
from aevb.errors import UsageError
from aevb.trainer import Trainer

VOID_TAGS = {"meta", "img", "br", "hr", "link", "input"}
MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/gif": b"GIF89a"}


class Page(HTMLParser):
    """Checks that tags nest properly; collects every tag with its attributes."""

    def __init__(self):
        super().__init__()
        self.open, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID_TAGS:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour") / "tour"
    assert main(["tour", "--quick", "--out", str(out), "--no-progress", "--json"]) == 0
    return out


def test_quick_tour_fits_every_experiment_and_writes_every_section(tour, capsys):
    markdown = (tour / "report.md").read_text()
    for heading in ("# aevb: the tutorial's experiments (aevb tour --quick --seed 0)", "## Contents", "## What ran",
                    "## Software"):
        assert heading + "\n" in markdown
    for name in TUTORIAL:
        experiment = EXPERIMENTS[name]
        assert (tour / name / "provenance.json").is_file()
        assert f"| {name} | {experiment.title} | tutorial {experiment.section} | fitted now |" in markdown
        assert f"- [{name}: {experiment.title}](#{name})" in markdown and f'<a id="{name}"></a>' in markdown
        assert f"## {name}: {experiment.title} (tutorial {experiment.section})\n" in markdown
        for figure in experiment.figures:  # every figure the tutorial shows, written and linked
            assert (tour / name / figure).stat().st_size > 1000
            assert f"]({name}/{figure})" in markdown
    for section in ("### Our numbers and the tutorial's", "### Settings", "### Figures"):
        assert markdown.count(section + "\n") == len(TUTORIAL)
    assert markdown.count("### Test ELBO per epoch\n") == sum(bool(EXPERIMENTS[n].curve) for n in TUTORIAL)
    for software in ("python", "torch", "numpy", "platform"):
        assert f"| {software} |" in markdown
    assert "leaves out the constant −log C" in markdown
    assert "- [The E-step across experiments](#e-step)" in markdown and "](e_step_gaps.png)" in markdown
    assert "`--epochs 1` here, `--epochs 100` in the tutorial" in markdown  # the GMVAE's settings differ, and it says so


def test_report_numbers_are_the_runs_numbers(tour):
    markdown = (tour / "report.md").read_text()
    gmvae = json.loads((tour / "gmvae" / "summary.json").read_text())
    # on the digits, the tutorial's MNIST numbers do not stand beside ours
    assert (f"| clustering accuracy (Hungarian matching) | {number(gmvae['cluster_accuracy'])} | not comparable | "
            "not comparable |") in markdown
    assert gmvae["test_elbo_without_log_c"] - gmvae["test_elbo"] == pytest.approx(np.log(10))
    first_epoch = json.loads((tour / "vrnn" / "metrics.jsonl").read_text().splitlines()[0])
    assert f"| 1 | {number(first_epoch['test_elbo'])} |\n" in markdown
    fa_2 = [json.loads(line) for line in (tour / "fa-2" / "metrics.jsonl").read_text().splitlines()]
    last_e = [r for r in fa_2 if r["phase"] == "e"][-1]
    gap = last_e["test_log_evidence"] - last_e["test_elbo_exact"]
    assert f"| variational gap at the end of the last phi-only phase | {number(gap)} |" in markdown
    assert "| largest change of the test evidence within a phi-only phase | 0 |" in markdown  # theta stood still


def section(markdown: str, name: str) -> str:
    start = markdown.index(f'<a id="{name}"></a>')
    end = markdown.find('<a id="', start + 1)
    return markdown[start:end if end > 0 else None]


def test_report_states_each_runs_own_settings_and_numbers(tour):
    """Every sentence, setting and number of an experiment's section comes from its run: its config.json, summary
    and metrics; nothing is the tutorial's unless the run's settings are the tutorial's."""
    markdown = (tour / "report.md").read_text()
    facts = {  # what the quick tour ran (reproduce.QUICK_TOUR), as the describing sentence must say it
        "fa-1": ["L = 2, D = 3", "32 steps of batch 32"],
        "fa-2": ["10 steps on phi only (approximate E-step), then 10 on theta only", "2 rounds (40 steps"],
        "vae": ["z ~ N(0, I_20)", "decoder 32-32 with dropout 0.1", "dequantized pixels", "1 epoch (", "Adam 0.0003",
                "on digits"],
        "cvae": ["latent 20 (variant full)", "MLPs 32-32"],
        "gmvae": ["Categorical(1/10)", "latent 4", "MLPs 32-32", "pixels binarized at 0.5", "marginal estimator"],
        "vrnn": ["a 2-layer LSTM of 16", "latent 2 per step", "x_t ~ product of Bernoullis"],
    }
    for name in TUTORIAL:
        experiment, run_dir = EXPERIMENTS[name], tour / name
        text = section(markdown, name)
        summary = json.loads((run_dir / "summary.json").read_text())
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for fact in facts[name]:
            assert fact in text, (name, fact)
        diagnosis = json.loads((run_dir / "diagnostics.json").read_text())
        evidence = "log p(x | y)" if name == "cvae" else "log p(x)"  # a model of x given its label y
        assert summary["evidence"] == evidence
        assert f"On {reproduce.QUICK_DIAGNOSIS.examples} test examples: {evidence} {diagnosis['log_evidence']};" in text
        evidence = evidence.replace("|", "\\|")  # in a table
        for quantity, key in [(evidence, "log_px"), ("ELBO[q_phi] (amortized)", "elbo_amortized"),
                              (f"total gap {evidence} - ELBO[q_phi]", "total_gap")]:
            assert f"| {quantity} | {number(diagnosis[key])} ± {number(diagnosis[key + '_se'])} |" in text
        covered = name != "vrnn"  # its q(z_t | h_t, x_t) has no per-example parameters
        assert ("| amortization gap ELBO[q*] - ELBO[q_phi] | not covered |" in text) != covered
        assert f"; {diagnosis['q_phi_kept']} of the examples kept q_phi" in text if covered else "kept q_phi" not in text
        threads = summary["threads"]
        assert f"| device | {summary['device']}, {threads} torch thread{'s' * (threads != 1)} |" in text
        assert f"| trained | epochs: {summary['epochs']}, gradient steps: {summary['steps']} |" in text
        # Only statements that hold at any length (fa-2's evidence in a phi-only phase, its gap after a theta-only
        # phase) stand beside a quick run's numbers; every number the tutorial states stays out.
        for i, p in enumerate(experiment.published):
            quantity, ours = p.quantity.replace("|", "\\|"), number(p.ours(summary, history))
            if (name, i) in {("fa-2", 0), ("fa-2", 2)}:
                assert f"| {quantity} | {ours} | {p.tutorial} | reproduced |" in text
            else:  # nor the rule, which holds the source's number
                judged = "—" if p.verdict(p.ours(summary, history)) is None else "not comparable"
                assert f"| {quantity} | {ours} | not comparable | {judged} | — |" in text, (name, quantity)
                assert p.tutorial not in text and (p.value is None or p.rule not in text)
        for value in experiment.curve.values():
            assert f"| {number(float(value))} |" not in text
        assert f"Verdict: **{'reproduced' if name == 'fa-2' else 'not comparable'}**." in text
        assert f"- `{experiment.length} " in text  # the length that differs is named
    assert "1000 steps on phi only" not in markdown and "2 torch threads" not in markdown
    assert "values are in the table above" not in markdown  # no caption promises what a digits run does not show


def test_the_contents_list_the_sections_in_their_order(tour):
    markdown = (tour / "report.md").read_text()
    contents = markdown[markdown.index("## Contents"):markdown.index('<a id="what-ran">')]
    listed = [line.split("](#")[1].rstrip(")") for line in contents.splitlines() if line.startswith("- [")]
    anchors = [a for a in (line[len('<a id="'):-len('"></a>')] for line in markdown.splitlines()
                           if line.startswith('<a id="')) if a != "contents"]
    assert listed == anchors and listed[-1] == "software" and len(listed) == len(TUTORIAL) + 3


def test_a_run_with_the_tutorials_settings_stands_beside_its_numbers_with_a_verdict(tour):
    """The fa-2 run rendered as if its flags were the tutorial's: its statements beside ours, judged by their rules."""
    experiment = EXPERIMENTS["fa-2"]
    provenance = json.loads((tour / "fa-2" / "provenance.json").read_text())
    provenance["flags"] = {**experiment.settings, "--seed": "0"}
    blocks, verdict = report.experiment_blocks("fa-2", experiment, tour / "fa-2", provenance,
                                               report.run_summary(tour / "fa-2", provenance))
    table = next(b for b in blocks if isinstance(b, report.Table))
    summary = json.loads((tour / "fa-2" / "summary.json").read_text())
    history = [json.loads(line) for line in (tour / "fa-2" / "metrics.jsonl").read_text().splitlines()]
    expected = [p.verdict(p.ours(summary, history)) or "—" for p in experiment.published]
    assert [row[2] for row in table.rows] == [p.tutorial for p in experiment.published]
    assert [row[3] for row in table.rows] == expected
    # 10-step phi-only phases do not make the ELBO tight: judged worse, and so is the experiment
    assert expected[:3] == ["reproduced", "worse", "reproduced"] and verdict == "worse"


def test_a_number_without_a_standard_error_is_shown_alone():
    """One example, or a diagnosis an earlier aevb wrote (before I(x; z) had one), has none: no KeyError."""
    assert report.with_se({"mutual_information": 0.5}, "mutual_information") == report.number(0.5)
    assert report.with_se({"log_px": -1.0, "log_px_se": None}, "log_px") == report.number(-1.0)
    assert report.with_se({"log_px": -1.0, "log_px_se": 0.25}, "log_px") == f"{report.number(-1.0)} ± {report.number(0.25)}"
    assert report.with_se({}, "log_px") == "not covered"


def test_verdict_rules():
    elbo = Published("test ELBO", "1788", lambda s, h: s["x"], value=1788, tolerance=5)
    assert [elbo.verdict(v) for v in (1790, 1783, 1800, 1700, None)] == ["reproduced", "reproduced", "better", "worse", None]
    entropy = Published("H", "0.11", lambda s, h: s["x"], value=0.11, tolerance=0.05, higher_is_better=False)
    assert [entropy.verdict(v) for v in (0.12, 0.01, 0.5)] == ["reproduced", "better", "worse"]
    statement = Published("gap", "> 0", lambda s, h: s["x"], holds=lambda gap: gap > 0)
    assert [statement.verdict(v) for v in (0.3, -0.1)] == ["reproduced", "worse"]
    assert Published("nmi", "not reported", lambda s, h: s["x"]).verdict(0.5) is None
    assert report.overall_verdict(["reproduced", "better", None], []) == "better"
    assert report.overall_verdict(["reproduced", "worse"], []) == "worse"
    assert report.overall_verdict(["reproduced", "reproduced", None], []) == "reproduced"
    assert report.overall_verdict(["reproduced"], ["data: digits here"]) == "not comparable"
    assert report.overall_verdict(["not comparable", None], []) == "not comparable"


def test_html_parses_and_embeds_every_image(tour):
    page = Page()
    page.feed((tour / "report.html").read_text())
    page.close()
    assert page.open == []
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    # each experiment's figures, its diagnosis (aevb diagnose) and the gaps of all experiments side by side
    assert len(images) == sum(len(EXPERIMENTS[n].figures) + 1 for n in TUTORIAL) + 1
    for image in images:
        mime, _, payload = image["src"].removeprefix("data:").partition(";base64,")
        assert base64.b64decode(payload).startswith(MAGIC[mime]) and image["alt"]
    references = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("src", "href", "srcset", "action")]
    assert all(v.startswith(("data:", "#")) for v in references)  # nothing to fetch: no network, no other file
    anchors = {attrs["id"] for _, attrs in page.tags if "id" in attrs}
    assert {v[1:] for v in references if v.startswith("#")} <= anchors  # every contents link has its target
    assert not {"script", "link", "iframe", "object"} & {tag for tag, _ in page.tags}
    assert sum(tag == "h2" for tag, _ in page.tags) == len(TUTORIAL) + 4  # contents, what ran, the E-step, software


def test_reproduce_continues_where_an_interruption_stopped(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of an experiment's training; the same command again continues inside it, from its
    checkpoint, and ends as an uninterrupted fit would."""
    out = tmp_path / "reproduce"
    command = ["reproduce", "fa-1", "vae", "--dataset", "digits", "--epochs-scale", "0.03", "--diagnose", "0",
               "--out", str(out), "--no-progress"]
    step = Trainer.step

    def interrupt_at_step_8(self, batch, phase):
        if self.step_count == 7 and self.batch_size == 100:  # the vae's eighth step (fa-1's batches are 32)
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch, phase)

    monkeypatch.setattr(Trainer, "step", interrupt_at_step_8)
    assert main(command) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # after the progress lines
        "aevb: interrupted by SIGINT after step 8; run the same command again to continue where it stopped")
    assert (out / "fa-1" / "provenance.json").is_file() and (out / "vae" / "checkpoint.pt").is_file()
    assert json.loads((out / "vae" / "aevb-run.json").read_text())["status"] == "incomplete"
    kept = (out / "fa-1" / "provenance.json").stat().st_mtime_ns

    monkeypatch.undo()
    assert main([*command, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["runs"] == {"fa-1": "kept", "vae": "fitted"}
    assert (out / "fa-1" / "provenance.json").stat().st_mtime_ns == kept
    assert sorted(p.name for p in out.iterdir()) == ["fa-1", "report.html", "report.md", "vae"]
    provenance = json.loads((out / "vae" / "provenance.json").read_text())
    assert provenance["flags"]["--epochs"] == "1" and provenance["flags"]["--dataset"] == "digits"
    planned, = reproduce.plan(["vae"], dataset="digits", scale=0.03)
    assert main(["fit", "vae", *planned.argv, "--out", str(tmp_path / "uninterrupted"), "--no-progress"]) == 0
    assert (out / "vae" / "metrics.jsonl").read_text() == (tmp_path / "uninterrupted" / "metrics.jsonl").read_text()
    markdown = (out / "report.md").read_text()
    assert "| fa-1 | Factor analysis, experiment 1: joint AEVB | tutorial §5.2 | kept: complete" in markdown
    assert "## vae: Variational autoencoder (tutorial §5.3)" in markdown

    # other settings into the same folder: refused before anything is fitted
    assert main(["reproduce", "fa-1", "--epochs-scale", "0.5", "--out", str(out)]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err
    assert (out / "fa-1" / "provenance.json").stat().st_mtime_ns == kept


def test_plan_scales_the_tutorials_lengths():
    tutorial = {p.name: p.flags for p in reproduce.plan(["all"], data_dir="/data")}
    assert tutorial["vae"]["--epochs"] == "46" and tutorial["cvae"]["--epochs"] == "69"
    assert tutorial["gmvae"]["--epochs"] == "100" and tutorial["vrnn"]["--epochs"] == "7"
    assert tutorial["fa-1"]["--epochs"] == "35" and tutorial["fa-2"]["--schedule"] == "alternate:1000,1000"
    assert tutorial["vae"]["--dataset"] == "mnist" and tutorial["vae"]["--data-dir"] == "/data"
    assert "--data-dir" not in tutorial["fa-1"] and "--dataset" not in tutorial["fa-2"]
    scaled = {p.name: p.flags for p in reproduce.plan(["fa-2", "gmvae", "vrnn"], dataset="digits", scale=0.02, seed=3)}
    assert scaled["gmvae"]["--epochs"] == "2" and scaled["vrnn"]["--epochs"] == "1"  # at least one epoch
    assert scaled["fa-2"]["--schedule"] == "alternate:20,20"
    assert {f["--seed"] for f in scaled.values()} == {"3"}
    with pytest.raises(UsageError, match="unknown experiment 'pca'"):
        reproduce.plan(["pca"])
    assert "vae-nll" not in tutorial  # all: the tutorial's experiments; the literature anchor is asked for by name
    anchor, = reproduce.plan(["vae-nll"], data_dir="/data")
    assert anchor.flags["--transform"] == "static-binarize" and anchor.flags["--epochs"] == "500"


def test_the_literature_anchor_runs_end_to_end_with_its_extra_bound(tmp_path, capsys):
    """vae-nll at a tiny scale on the digits: its K = 200 bounds, with q_phi and with the refined q* as proposals,
    are evaluated after the fit and reported as NLLs."""
    out = tmp_path / "anchor"
    assert main(["reproduce", "vae-nll", "--dataset", "digits", "--epochs-scale", "0.002", "--diagnose", "0",
                 "--out", str(out), "--no-progress"]) == 0
    assert not (out / "vae-nll" / "diagnostics.json").exists()  # --diagnose 0: none (the tour's runs have theirs)
    provenance = json.loads((out / "vae-nll" / "provenance.json").read_text())
    summary = json.loads((out / "vae-nll" / "summary.json").read_text())
    k200 = provenance["evaluations"]["iwae_log_likelihood_k200"]
    assert summary["iwae_samples"] == 5000 and k200 < summary["iwae_log_likelihood"] + 0.5  # K = 5000 is tighter
    assert summary["transform"] == "static-binarize" and summary["epochs"] == 1
    markdown = (out / "report.md").read_text()
    assert "## vae-nll: VAE on statically binarized MNIST: a literature anchor (Rezende & Mohamed 2015" in markdown
    assert f"| test negative log-likelihood, IWAE bound with K = 200 (nats) | {number(-k200)} | not comparable |" in markdown
    refined = provenance["evaluations"]["iwae_log_likelihood_refined_k200"]
    assert refined == pytest.approx(k200, abs=0.5)  # a bound on the same log p(x) (one epoch: q_phi is near the prior)
    assert f"| the same with the refined q* as proposal (100 local E-steps; nats) | {number(-refined)} |" in markdown
    assert "statically binarized pixels" in markdown and "decayed by 0.631 after epochs 200, 350" in markdown
    assert main(["report", str(out / "vae-nll")]) == 0  # aevb report of the run alone shows the bounds evaluated too
    assert f"| `iwae_log_likelihood_k200` | {number(k200)} |" in (out / "vae-nll" / "report.md").read_text()


def test_a_report_replaces_only_its_own_files(tour, tmp_path, capsys):
    """aevb's report files carry its mark; anything else of their names is the user's, refused before fitting."""
    assert all(report.written_by_aevb(tour / name) for name in report.REPORT_MARKS)
    unmarked = tmp_path / "unmarked"  # an earlier aevb's figure, unmarked, beside its report
    unmarked.mkdir()
    (unmarked / "report.md").write_bytes((tour / "report.md").read_bytes())
    plotting.subplots(1, figsize=(2, 2))[0].savefig(unmarked / "e_step_gaps.png")  # Software: Matplotlib
    report.check_report_files(unmarked)
    for name, make in [("report.md", lambda p: p.write_text("# my notes\n")),
                       ("report.html", lambda p: p.write_text("<title>mine</title>")),
                       ("e_step_gaps.png", lambda p: p.write_bytes((unmarked / "e_step_gaps.png").read_bytes())),
                       ("report.md", lambda p: p.symlink_to(tour / "report.md"))]:  # a link: it would be written through
        out = tmp_path / f"user-{name}-{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        make(out / name)
        before = (out / name).read_bytes()
        assert main(["reproduce", "fa-1", "--dataset", "digits", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"aevb: error: --out {out} holds {name}, which aevb did not write and its report would replace; "
                       "move it or choose another --out"]
        assert sorted(p.name for p in out.iterdir()) == [name] and (out / name).read_bytes() == before  # nothing fitted


def test_a_model_that_is_not_installed_is_listed_not_silently_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "available_models", lambda: {"fa", "vae", "cvae", "gmvae"})
    assert main(["reproduce", "vrnn", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "| vrnn | Variational RNN | tutorial §5.6 | not run: its model is not installed |" in (tmp_path / "report.md").read_text()


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(os.environ.get("AEVB_BROWSER_TESTS") != "1" or not CHROMIUM.exists(),
                    reason="opt-in: AEVB_BROWSER_TESTS=1 and Debian's chromium at /usr/bin/chromium")
def test_report_renders_in_headless_chromium(tour, tmp_path):
    from matplotlib.image import imread

    screenshot = tmp_path / "report.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}", "--window-size=1200,3000",
                    (tour / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    pixels = imread(screenshot)[..., :3]  # (3000, 1200, 3) in [0, 1]
    assert pixels.shape[:2] == (3000, 1200)
    assert (pixels.mean(-1) < 0.5).mean() > 0.01  # text and figures, not a blank page
    assert pixels.std() > 0.1


# aevb report: any finished runs, a user's own model's among them ----------------------------------------------------
@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """A folder of two finished runs, diagnosed (the PPCA example, fitted by path, and the built-in CVAE, a model of
    x given its label y), and an interrupted one."""
    folder = tmp_path_factory.mktemp("runs") / "sweep"
    ppca = Path(__file__).parents[1] / "examples" / "ppca.py"
    assert main(["fit", "--model", f"{ppca}:PPCA", "--latent-dim", "2", "--epochs", "3", "--iwae", "5",
                 "--out", str(folder / "ppca"), "--no-progress"]) == 0
    assert main(["fit", "cvae", "--epochs", "2", "--hidden", "16", "--iwae", "5", "--out", str(folder / "cvae"),
                 "--no-progress"]) == 0
    for name in ("ppca", "cvae"):
        assert main(["diagnose", str(folder / name), "--examples", "20", "--steps", "5", "--iwae", "20",
                     "--no-progress"]) == 0
    (folder / "cvae-interrupted").mkdir()
    (folder / "cvae-interrupted" / "aevb-run.json").write_text('{"format": "aevb run", "status": "incomplete"}')
    return folder


def table_row(markdown: str, first: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first``."""
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {first} |"))
    return [cell.strip() for cell in row.strip("|").split(" | ")]


def undiagnosed_copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    for name in ("diagnostics.json", "diagnostics.png"):
        (to / name).unlink()
    return to


def test_a_report_of_one_run_is_written_into_it_and_states_the_runs_numbers(finished_runs, tmp_path, capsys):
    run = undiagnosed_copy(finished_runs / "ppca", tmp_path / "ppca")
    assert main(["report", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == {"runs": {"ppca": "reported"}, "report_md": str(run / "report.md"),
                      "report_html": str(run / "report.html")}
    text = (run / "report.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert text.startswith("# aevb: report of run ppca\n") and summary["model"].endswith("ppca.py:PPCA")
    for key in run_report.findings(summary):
        assert table_row(text, run_report.quantity(key, summary))[1] == number(summary[key])
    assert run_report.quantity("test_log_evidence", summary) == "test log p(x), exact (the model's log_evidence)"
    assert ("fitted to digits: images of shape 8 × 8 (transform none), schedule joint, 3 epochs (45 gradient steps) "
            "of batch 100, Adam 0.001, seed 0. Its bounds are of log p(x)") in text
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in history:
        assert table_row(text, str(record["epoch"]))[1:] == [str(record["step"]), number(record["train_elbo"]),
                                                             number(record["test_elbo"])]
    assert table_row(text, "`latent_dim`")[1] == "2"
    assert f"Not diagnosed: `aevb diagnose {run}`" in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert figures == sorted(p.name for p in run.glob("*.png")) and figures  # linked beside the report
    page = Page()
    page.feed((run / "report.html").read_text())
    embedded = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(embedded) == len(figures) and all(src.startswith("data:image/png;base64,") for src in embedded)
    marker = json.loads((run / "aevb-run.json").read_text())
    assert {"report.md", "report.html"} <= set(marker["files"]) and marker["status"] == "complete"
    assert main(["eval", str(run), "--iwae", "2"]) == 0  # still a finished run that aevb reads


def test_a_reports_device_row_says_where_and_how_the_run_trained(finished_runs, tmp_path, capsys):
    run = undiagnosed_copy(finished_runs / "ppca", tmp_path / "ppca")
    summary = json.loads((run / "summary.json").read_text())
    threads = summary["threads"]
    for entries, device in [({}, f"cpu, {threads} torch thread{'s' * (threads != 1)}"),
                            ({"compiled": True, "processes": 2, "threads": 1},
                             "cpu, 1 torch thread, compiled with torch.compile, 2 processes (torchrun)")]:
        (run / "summary.json").write_text(json.dumps({**summary, **entries}))
        assert main(["report", str(run)]) == 0
        assert table_row((run / "report.md").read_text(), "device")[1] == device
    assert report.where_it_trained({"device": "cuda", "processes": 1}) == "cuda, 1 process (torchrun)"
    (run / "summary.json").write_text(json.dumps({**summary, "compiled": "yes"}))
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    assert "summary.json is damaged (compiled is 'yes', not true (absent where false))" in capsys.readouterr().err


def test_a_report_of_several_runs_sets_their_numbers_and_gaps_side_by_side(finished_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(finished_runs), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    interrupted = finished_runs / "cvae-interrupted"
    assert result["runs"] == {"cvae": "reported", "ppca": "reported", str(interrupted): "interrupted"}
    text = (out / "report.md").read_text()
    assert text.startswith("# aevb: report of 2 runs\n")
    header = table_row(text, "run")
    assert header[:6] == ["run", "model", "dataset", "epochs", "bounds of", "IWAE K"]
    assert {"`train_elbo`", "`test_elbo`", "`iwae_log_likelihood`"} <= set(header)
    for name, evidence in [("cvae", "log p(x \\| y)"), ("ppca", "log p(x)")]:
        summary = json.loads((finished_runs / name / "summary.json").read_text())
        row = table_row(text, f"[{name}](#run-{name})")
        assert row[1:6] == [f"`{summary['model']}`", "digits", str(summary["epochs"]), evidence, "5"]
        assert row[6:] == [number(summary[key.strip("`")]) for key in header[6:]]
    assert table_row(text, str(interrupted))[6] == f"interrupted: aevb resume {interrupted}"
    assert "[The E-step across runs](#e-step)" in text and (out / "e_step_gaps.png").is_file()
    assert "For cvae, given its label y, they are of log p(x | y) and its ELBO." in text
    for name in ("cvae", "ppca"):
        diagnosis = json.loads((finished_runs / name / "diagnostics.json").read_text())
        assert table_row(text, name)[1:] == [str(diagnosis["examples"])] + [
            report.with_se(diagnosis, key) for key in ("log_px", "elbo_amortized", "approximation_gap",
                                                        "amortization_gap")] + [
            f"{diagnosis['active_units']} of {diagnosis['latent_dim']}"]
        figure = Path(os.path.relpath(finished_runs / name / "diagnostics.png", out)).as_posix()
        assert f"]({figure})" in text
    cvae = text[text.index("## cvae: cvae"):text.index("## ppca:")]
    diagnosis = json.loads((finished_runs / "cvae" / "diagnostics.json").read_text())
    assert table_row(cvae, "total gap log p(x \\| y) - ELBO[q_phi]")[1] == report.with_se(diagnosis, "total_gap")
    assert "fitted to digits, given its label y: images" in cvae
    assert [report.what_of(e) for e in ("log p(x)", "log p(u)", "log p(u | y)", "log p(x | c)")] == [
        "", "of the standardized data u", "of the standardized data u and given its label y", "given its context c"]
    assert not (finished_runs / "cvae" / "report.md").exists()  # the runs are read, not written


def test_a_report_refuses_what_it_cannot_report_in_one_line_and_writes_nothing(finished_runs, tmp_path, capsys):
    interrupted = finished_runs / "cvae-interrupted"
    only_interrupted = tmp_path / "only-interrupted"
    interrupted_copy = only_interrupted / "cvae-interrupted"
    shutil.copytree(interrupted, interrupted_copy)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("# my notes\n")
    run = finished_runs / "cvae"
    refit = "fit the run again (delete it first if it is interrupted)"
    cases = [
        ([str(interrupted)], f"{interrupted} is an interrupted run, not a finished one; finish it with aevb resume "
                             f"{interrupted}, or leave it out"),
        ([str(finished_runs)], "name the folder of a report of several runs with --out DIR"),
        ([str(only_interrupted), "--out", str(tmp_path / "r")], f"no finished run to report: {interrupted_copy} is "
                                                               "interrupted; finish them with aevb resume RUN_DIR"),
        ([str(tmp_path / "absent")], f"{tmp_path / 'absent'}: no such run directory; fit the run again, or name "
                                     "another run directory"),
        ([str(mine)], f"{mine} is neither a run directory nor a folder of them (no aevb-run.json in it or its "
                      "folders); name the --out of aevb fit"),
        ([str(run), "--out", str(mine)],
         f"--out {mine} holds report.md, which aevb did not write and its report would replace; move it or choose "
         "another --out"),
        ([str(run), "--out", str(interrupted)],
         f"--out {interrupted} is an interrupted run, which a report may not be written into; choose another --out"),
        ([str(run), "--out", str(run / "reports")],
         f"--out {run / 'reports'} is inside the run {run}; write the report into the run itself or beside it"),
    ]
    damage = [  # a file of a copy of the run, edited; what the error says of it
        ("config.json", lambda r: r["args"].pop("seed"), "args has no seed"),
        ("config.json", lambda r: r["args"].update(lr="fast"), "args lr is 'fast', not a number"),
        ("summary.json", lambda r: r.update(train_seconds="x"), "train_seconds is 'x', not a number of seconds"),
        ("summary.json", lambda r: r.pop("iwae_samples"), "it has an IWAE bound but no iwae_samples"),
        ("summary.json", lambda r: r.update(epochs="two"), "epochs is 'two', not a whole number"),
        ("diagnostics.json", lambda r: r.update(local_e_step={"steps": 5}),
         "local_e_step is {'steps': 5}, not local E-step settings"),
        ("diagnostics.json", lambda r: r.pop("log_px"), "it has no log_px"),
        ("aevb-run.json", lambda r: r.update(files=[1, [2]]), "files is [1, [2]], not a list of texts"),
    ]
    for i, (name, edit, what) in enumerate(damage):
        copy = tmp_path / f"damaged-{i}"
        shutil.copytree(run, copy)
        record = json.loads((copy / name).read_text())
        edit(record)
        (copy / name).write_text(json.dumps(record))
        advice = f"diagnose the run again: aevb diagnose {copy}" if name == "diagnostics.json" else refit
        cases.append(([str(copy)], f"{copy / name} is damaged ({what}); {advice}"))
    for i, (content, what) in enumerate([(b"\xff\xfe", "not text"), (b'{"step": 1, "epoch": 1}\n{"step": 2, "ep',
                                                                      "line 2 is not a record of a step and epoch"),
                                         (b'{"step": 1, "epoch": 1, "train_elbo": "bad"}\n',
                                          "line 1: train_elbo is 'bad', not a number or null")]):
        copy = tmp_path / f"damaged-metrics-{i}"
        shutil.copytree(run, copy)
        (copy / "metrics.jsonl").write_bytes(content)
        cases.append(([str(copy), "--out", str(tmp_path / "r")], f"{copy / 'metrics.jsonl'} is damaged ({what}); "
                                                                 f"{refit}"))
    for argv, message in cases:
        assert main(["report", *argv]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"aevb: error: {message}"]
    assert not (tmp_path / "r").exists() and (mine / "report.md").read_text() == "# my notes\n"
    assert sorted(p.name for p in interrupted.iterdir()) == ["aevb-run.json"]
    assert not any((tmp_path / f"damaged-{i}" / "report.md").exists() for i in range(len(damage)))


def test_a_report_adopts_only_what_it_wrote_and_never_the_folders_figure_as_a_runs(finished_runs, tmp_path, capsys):
    """A user's PNG of the comparison figure's name in a run stays the user's: a new fit into the run refuses to
    delete it. A report of several runs into one of them keeps its comparison figure out of that run's figures."""
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(finished_runs / "ppca", first)
    shutil.copytree(finished_runs / "cvae", second)
    assert main(["report", str(first), str(second), "--out", str(first)]) == 0
    assert "e step gaps" not in (first / "report.md").read_text().split("## first:")[1]
    assert main(["report", str(first)]) == 0
    assert "e_step_gaps.png" not in (first / "report.md").read_text()
    run = undiagnosed_copy(finished_runs / "cvae", tmp_path / "run")
    assert main(["report", str(run)]) == 0
    plotting.subplots(1, figsize=(2, 2))[0].savefig(run / "e_step_gaps.png")  # the user's: not marked as aevb's
    assert main(["report", str(run)]) == 0  # one run: no comparison figure to write
    assert "e_step_gaps.png" not in json.loads((run / "aevb-run.json").read_text())["files"]
    capsys.readouterr()
    assert main(["fit", "cvae", "--steps", "1", "--hidden", "8", "--iwae", "0", "--out", str(run),
                 "--no-progress"]) == 2
    assert "holds files aevb did not write (e_step_gaps.png)" in capsys.readouterr().err
    assert (run / "e_step_gaps.png").is_file()


def test_a_report_names_a_run_named_dot_keeps_the_tours_report_and_runs_from_python(finished_runs, tour, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.chdir(undiagnosed_copy(finished_runs / "ppca", tmp_path / "ppca"))
    assert main(["report", "."]) == 0
    assert Path("report.md").read_text().startswith("# aevb: report of run ppca\n")
    assert main(["report", str(tour), "--out", str(tour)]) == 2
    assert main(["report", str(tour), "--out", str(tmp_path / "tour")]) == 0
    assert all(f"## {name}: " in (tmp_path / "tour" / "report.md").read_text() for name in TUTORIAL)
    assert [anchor for _, anchor in run_report.run_names([Path("x/a.b"), Path("y/a-b")])] == ["run-a-b", "run-a-b-2"]
    result = run_report.write_runs_report([str(finished_runs / "ppca"), finished_runs / "cvae"], out=str(tmp_path / "py"))
    assert result["runs"] == {"ppca": "reported", "cvae": "reported"}  # from Python, as the command line
    assert "by `aevb.run_report.write_runs_report` into" in (tmp_path / "py" / "report.md").read_text()


def test_a_run_holding_its_report_is_replaced_whole_by_a_new_fit(tmp_path):
    run = tmp_path / "run"
    flags = ["fit", "vae", "--steps", "2", "--hidden", "8", "--iwae", "0", "--out", str(run), "--no-progress"]
    assert main(flags) == 0 and main(["report", str(run)]) == 0
    assert "2 gradient steps (`--steps`; the last in epoch 1) of batch 100" in (run / "report.md").read_text()
    assert main(flags) == 0 and not (run / "report.md").exists()
