"""The README's "Your own model" example runs as written: checked, fitted with an EM schedule, evaluated, loaded back."""
import json
import re
import shutil
from pathlib import Path

from aevb.cli import main

README = Path(__file__).parents[1] / "README.md"


def test_your_own_model_runs_as_written(tmp_path, capsys, monkeypatch, preloaded_python):
    section = README.read_text().split("## Your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]
    assert len(code.strip().splitlines()) <= 40
    (tmp_path / "my_model.py").write_text(code)
    # `python my_model.py` in a process of its own, forked from one that has imported torch and aevb (conftest.py)
    result = preloaded_python.run(["my_model.py"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    evaluated = eval(result.stdout.splitlines()[0])  # the dict evaluate_run returned
    assert evaluated["iwae_samples"] == 1000 and evaluated["test_elbo"] <= evaluated["iwae_log_likelihood"] + 0.05
    assert "MyModel(" in result.stdout

    # the run it wrote is a run like any other: its metrics show the EM phases, and the command line reads it
    records = [json.loads(line) for line in (tmp_path / "runs" / "mine" / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in records} == {"e", "m"}
    assert records[-1]["test_elbo"] > records[0]["test_elbo"]
    monkeypatch.chdir(tmp_path.parent)
    assert main(["sample", str(tmp_path / "runs" / "mine"), "--n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    assert main(["report", str(tmp_path / "runs" / "mine")]) == 0
    assert "# aevb: report of run mine" in (tmp_path / "runs" / "mine" / "report.md").read_text()

    # "the same fit from the command line", as the README writes it, is the same fit
    command = re.search(r"The same fit from the command line is `(aevb fit [^`]*)`", " ".join(section.split()))[1]
    fitted = json.loads((tmp_path / "runs" / "mine" / "summary.json").read_text())
    shutil.rmtree(tmp_path / "runs" / "mine")
    monkeypatch.chdir(tmp_path)
    assert main([*command.split()[1:], "--no-progress"]) == 0
    again = json.loads((tmp_path / "runs" / "mine" / "summary.json").read_text())
    assert again["test_elbo"] == fitted["test_elbo"] and again["schedule"] == fitted["schedule"] == "alternate:20,20"
