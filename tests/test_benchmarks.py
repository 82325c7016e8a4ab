"""The benchmark scripts' own checks: two loops timed only when they compute the same numbers, and no user file
replaced or deleted (``seeds.py`` has its own tests)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_loops_that_compute_different_numbers_are_not_timed(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench import check_same_numbers

    torch.manual_seed(0)
    ours, plain, x = nn.Linear(3, 1), nn.Linear(3, 1), torch.randn(5, 3)
    plain.load_state_dict(ours.state_dict())
    same = check_same_numbers((ours, lambda: ours(x).mean()), (plain, lambda: plain(x).mean()), seed=0)
    assert same["elbo_abs_diff"] == 0 and same["grad_norm_rel_diff"] == 0
    with pytest.raises(ValueError, match="compute different numbers, so they were not timed"):
        check_same_numbers((ours, lambda: ours(x).mean()), (plain, lambda: 2 * plain(x).mean()), seed=0)
    moved = lambda: plain(x).mean() + 5 * (plain.weight - plain.weight.detach()).sum()  # the same value, another gradient
    with pytest.raises(ValueError, match="gradient norms"):
        check_same_numbers((ours, lambda: ours(x).mean()), (plain, moved), seed=0)


def test_kill_and_resume_refuses_a_folder_that_holds_files(preloaded_python, tmp_path):
    (tmp_path / "mine.txt").write_text("a user's file")
    done = preloaded_python.run([BENCHMARKS / "kill_and_resume.py", "--kill-at", "3", "--out", tmp_path, "--",
                                 "fit", "fa"], timeout=120)
    assert done.returncode == 2 and "is not an empty folder" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"] and (tmp_path / "mine.txt").read_text() == "a user's file"


def test_data_on_disk_refuses_a_big_npy_of_another_shape(preloaded_python, tmp_path):
    np.save(tmp_path / "big.npy", np.arange(6.0).reshape(2, 3))
    done = preloaded_python.run([BENCHMARKS / "data_on_disk.py", "--gigabytes", "0.01", "--folder", tmp_path],
                                timeout=120)
    assert done.returncode == 2 and "has shape (2, 3)" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy"]
    assert np.load(tmp_path / "big.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
