"""benchmarks/seeds.py: one fit over several seeds, resumed rather than refitted, summarized per number."""
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "seeds.py"
FIT = ["--", "gmvae", "--epochs", "2", "--components", "3", "--hidden", "8", "--latent-dim", "2", "--threads", "1"]


def test_seeds_fits_each_seed_once_and_summarizes_its_runs(preloaded_python, tmp_path):
    out = tmp_path / "runs"
    first = preloaded_python.run([SCRIPT, "--seeds", "0,3", "--parallel", "2", "--out", out, *FIT], timeout=300)
    assert first.returncode == 0, first.stderr
    summaries = {s: json.loads((out / f"seed-{s}" / "summary.json").read_text()) for s in (0, 3)}
    numbers = json.loads((out / "seeds.json").read_text())["numbers"]
    elbos = [summaries[s]["test_elbo"] for s in (0, 3)]
    assert numbers["test_elbo"]["values"] == elbos and len(set(elbos)) == 2  # each seed its own fit
    assert numbers["test_elbo"]["median"] == statistics.median(elbos)
    assert numbers["cluster_accuracy"]["max"] == max(s["cluster_accuracy"] for s in summaries.values())
    assert "epochs" not in numbers and "threads" not in numbers  # integers: counts and settings

    modified = (out / "seed-0" / "model.pt").stat().st_mtime_ns
    again = preloaded_python.run([SCRIPT, "--seeds", "0,3", "--out", out, "--epoch", "1", "--keys", "test_elbo",
                                  *FIT], timeout=300)
    assert again.returncode == 0, again.stderr
    assert (out / "seed-0" / "model.pt").stat().st_mtime_ns == modified  # read, not fitted again
    records = [json.loads((out / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()[0]) for s in (0, 3)]
    assert [r["epoch"] for r in records] == [1, 1]
    assert json.loads((out / "seeds.json").read_text())["numbers"] == {"test_elbo": {
        "values": [r["test_elbo"] for r in records], "median": statistics.median(r["test_elbo"] for r in records),
        "min": min(r["test_elbo"] for r in records), "max": max(r["test_elbo"] for r in records)}}


def test_seeds_names_the_log_of_a_failed_fit(preloaded_python, tmp_path):
    result = preloaded_python.run([SCRIPT, "--seeds", "2", "--out", tmp_path, "--", "gmvae", "--components", "0"],
                                  timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"fits failed for seeds [2]: see {tmp_path}/seed-2.log"]
    assert "at least 2 components, got 0" in (tmp_path / "seed-2.log").read_text()
    assert not (tmp_path / "seeds.json").exists()


def test_parse_seeds_reads_ranges_and_lists():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from seeds import parse_seeds
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert parse_seeds("0-2,8") == [0, 1, 2, 8] and parse_seeds("5") == [5]


def test_fits_stopped_by_a_signal_are_interrupted_not_failed_even_where_seeds_py_ignores_it(tmp_path):
    """Started in the background by a shell, seeds.py ignores SIGINT (the shell leaves it ignored) while the fits,
    which handle it, stop at a checkpoint: the same command resumes them, so it says so and exits 130."""
    out = tmp_path / "runs"
    command = [sys.executable, SCRIPT, "--seeds", "0,1", "--parallel", "2", "--out", out, *FIT[:2], "--epochs", "1000",
               *FIT[4:]]
    ignoring = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        while not all((out / f"seed-{s}" / "metrics.jsonl").is_file() for s in (0, 1)):  # both are training
            assert ignoring.poll() is None and time.monotonic() < deadline, "the fits did not start training"
            time.sleep(0.1)
        os.killpg(ignoring.pid, signal.SIGINT)
        _, err = ignoring.communicate(timeout=120)
    finally:
        if ignoring.poll() is None:
            os.killpg(ignoring.pid, signal.SIGKILL)
    assert ignoring.returncode == 130 and err.strip().splitlines()[-1] == (
        "interrupted: the same command resumes the unfinished fits")
    assert all((out / f"seed-{s}" / "checkpoint.pt").is_file() for s in (0, 1))
