"""benchmarks/seeds.py: one fit over several seeds, resumed rather than refitted, summarized per number."""
import json
import statistics
import sys
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
