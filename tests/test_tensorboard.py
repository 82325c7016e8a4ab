"""TensorBoard event files: what the logger writes is read back by TensorBoard's own reader, and without the
package the logger is one clear UsageError."""
import json
import sys

import numpy as np
import pytest

from aevb.errors import UsageError

# An alternating schedule's epochs: E steps, M steps, then both; the ELBO's terms and a model's own metrics.
RECORDS = [
    [{"step": 10, "epoch": 1, "phase": "e", "train_elbo": -120.5, "train_log_likelihood": -100.25, "train_kl": 20.25,
      "test_elbo": -121.0, "cluster_accuracy": 0.5, "estimator": "marginal"}],
    [{"step": 20, "epoch": 2, "phase": "m", "train_elbo": -110.5, "train_log_likelihood": -92.0, "train_kl": 18.5,
      "test_elbo": -111.75, "cluster_accuracy": 0.625, "estimator": "marginal"}],
    [{"step": 30, "epoch": 3, "phase": "mixed", "train_elbo": -105.5, "train_log_likelihood": -88.0, "train_kl": 17.5,
      "test_elbo": -106.75, "cluster_accuracy": 0.75, "estimator": "marginal"}],
]


def read_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0}).Reload()


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_records_are_scalars_at_their_steps(tmp_path):
    pytest.importorskip("tensorboard")
    from aevb.tensorboard import TensorBoardLogger

    with TensorBoardLogger(tmp_path) as logger:
        for records in RECORDS:
            logger(records)
    events = read_events(tmp_path)
    expected = {"train/elbo": "train_elbo", "train/log_likelihood": "train_log_likelihood", "train/kl": "train_kl",
                "test/elbo": "test_elbo", "metrics/cluster_accuracy": "cluster_accuracy", "schedule/epoch": "epoch"}
    assert set(events.Tags()["scalars"]) == {*expected, "schedule/phase"}  # no step, no strings
    for tag, key in expected.items():
        assert scalars(events, tag) == [(r["step"], pytest.approx(r[key])) for [r] in RECORDS]
    assert scalars(events, "schedule/phase") == [(10, 0.0), (20, 2.0), (30, 1.0)]  # E: 0; M: 2; both (mixed): 1


def test_finished_epochs_are_readable_while_the_writer_is_open(tmp_path):
    """Flushed after every epoch: what a killed process would leave (it loses only what is not yet flushed)."""
    pytest.importorskip("tensorboard")
    from aevb.tensorboard import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path)
    logger(RECORDS[0])
    assert scalars(read_events(tmp_path), "train/elbo") == [(10, -120.5)]
    logger(RECORDS[1])
    assert scalars(read_events(tmp_path), "train/elbo") == [(10, -120.5), (20, -110.5)]
    logger.close()


def test_a_resumed_run_replaces_what_came_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from aevb.tensorboard import TensorBoardLogger

    with TensorBoardLogger(tmp_path) as logger:  # killed after epoch 2, its checkpoint from epoch 1 (step 10)
        logger(RECORDS[0] + RECORDS[1])
    with TensorBoardLogger(tmp_path, purge_step=11) as logger:
        logger([{**RECORDS[1][0], "train_elbo": -105.0}])
    assert scalars(read_events(tmp_path), "train/elbo") == [(10, -120.5), (20, -105.0)]


def test_a_run_resumed_before_its_checkpoint_saw_a_record_logs_each_step_once(tmp_path):
    """Killed after epoch 1's record, its last checkpoint (every few steps) from before that record."""
    pytest.importorskip("tensorboard")
    from aevb.fitting import tensorboard_logger
    from aevb.tensorboard import TensorBoardLogger

    with TensorBoardLogger(tmp_path) as logger:
        logger(RECORDS[0])
    (tmp_path / "metrics.jsonl").write_text(json.dumps(RECORDS[0][0]) + "\n")
    with tensorboard_logger(tmp_path, resume=True, kept_lines=0) as logger:
        logger(RECORDS[0])
    assert scalars(read_events(tmp_path), "train/elbo") == [(10, -120.5)]


def test_figures_are_images_pixel_for_pixel(tmp_path):
    pytest.importorskip("tensorboard")
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from aevb.tensorboard import TensorBoardLogger

    rng = np.random.default_rng(0)
    curve = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    plt.imsave(tmp_path / "vae_learning_curve.png", curve)
    frames = [np.full((8, 6, 3), c, dtype=np.uint8) for c in (0, 255)]  # an animation ending on white
    Image.fromarray(frames[0]).save(tmp_path / "generation.gif", save_all=True,
                                    append_images=[Image.fromarray(frames[1])])
    (tmp_path / "notes.txt").write_text("not a figure")

    with TensorBoardLogger(tmp_path) as logger:
        logger.add_figures(step=20)
    events = read_events(tmp_path)
    assert set(events.Tags()["images"]) == {"figures/vae_learning_curve", "figures/generation"}
    for tag, pixels in {"figures/vae_learning_curve": curve, "figures/generation": frames[1]}.items():
        [image] = events.Images(tag)
        assert (image.step, image.height, image.width) == (20, *pixels.shape[:2])
        decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, pixels)


def test_without_the_package_one_usage_error(tmp_path, monkeypatch):
    for name in list(sys.modules):
        if name.split(".")[0] == "tensorboard" or name.startswith("torch.utils.tensorboard"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ModuleNotFoundError
    from aevb.tensorboard import TensorBoardLogger

    with pytest.raises(UsageError) as error:
        TensorBoardLogger(tmp_path)
    message = str(error.value)
    assert message.startswith("--tensorboard needs the tensorboard package: pip install 'aevb[tensorboard]'")
    assert "\n" not in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_run_stopped_as_it_is_saved_logs_its_figures_once(tmp_path, monkeypatch):
    """Stopped after its figures are drawn (SIGTERM there raises Terminated), then resumed: the figures reach
    TensorBoard once, at the last step (a resumed writer keeps what an earlier process logged at that step)."""
    pytest.importorskip("tensorboard")
    from aevb import runs
    from aevb.cli import main
    from aevb.errors import Terminated

    save_run = runs.save_run

    def terminated(*args, **kwargs):
        monkeypatch.setattr(runs, "save_run", save_run)
        raise Terminated

    monkeypatch.setattr(runs, "save_run", terminated)
    flags = ["--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--iwae", "0", "--no-progress"]
    assert main(["fit", "vae", *flags, "--tensorboard", "--out", str(tmp_path / "run")]) == 143
    assert main(["resume", str(tmp_path / "run"), "--no-progress"]) == 0
    events = read_events(tmp_path / "run")
    figures = [tag for tag in events.Tags()["images"] if tag.startswith("figures/")]
    assert figures and {tag: [e.step for e in events.Images(tag)] for tag in figures} == {tag: [15] for tag in figures}
