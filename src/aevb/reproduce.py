"""The tutorial's experiments with its settings (``aevb reproduce``), and a brief tour of them (``aevb tour``).

``EXPERIMENTS`` holds each experiment of the tutorial: the model, the ``aevb fit`` flags that are the
tutorial's settings, the numbers it published and the figures it shows. ``plan`` turns a selection into
``aevb fit`` command lines (at a scale of the tutorial's length, on a chosen data set, or with the tour's
budget); ``run`` fits them one after the other, each into ``OUT/<experiment>``. Called again with
``resume``, an interrupted ``run`` continues where it stopped, inside the experiment it was fitting (from
its last checkpoint); a complete run with the same settings is kept, not fitted again.

    from aevb import reproduce, report
    statuses = reproduce.run(reproduce.plan(["vae"], dataset="digits", scale=0.1), Path("runs/r"))
    report.write_report(Path("runs/r"), statuses, "aevb reproduce vae --dataset digits --epochs-scale 0.1")
"""
from __future__ import annotations

import importlib.metadata
import json
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aevb.errors import UsageError

PROVENANCE = "provenance.json"  # written into each run directory: the command, its flags, wall time, versions
History = list[dict]
# The tutorial's published VRNN test ELBOs on binarized MNIST, epochs 1-7 (its code draws z_t with sample()).
TUTORIAL_VRNN_TEST_ELBO = (-93.0, -85.5, -81.2, -79.9, -79.2, -78.3, -78.5)
Reader = Callable[[dict, History], "float | None"]


def final(key: str) -> Reader:
    """Our number: ``key`` of the run's summary."""
    return lambda summary, history: summary.get(key)


def e_phases(history: History) -> list[History]:
    """The records of each phi-only phase, in order."""
    phases: list[History] = []
    for previous, record in zip([{}] + history, history):
        if record["phase"] == "e":
            if previous.get("phase") != "e":
                phases.append([])
            phases[-1].append(record)
    return phases


def evidence_change_in_e_phases(summary: dict, history: History) -> float | None:
    """Largest change of the exact test evidence within one phi-only phase (0 if theta truly stood still)."""
    changes = [max(r["test_log_evidence"] for r in p) - min(r["test_log_evidence"] for r in p) for p in e_phases(history)]
    return max(changes, default=None)


def gap_after_last_e_phase(summary: dict, history: History) -> float | None:
    """Exact variational gap, evidence - ELBO, at the last step of the last phi-only phase."""
    phases = e_phases(history)
    return phases[-1][-1]["test_log_evidence"] - phases[-1][-1]["test_elbo_exact"] if phases else None


@dataclass(frozen=True)
class Published:
    """One of the tutorial's results, as it states it, and how to read our counterpart off a run."""

    quantity: str
    tutorial: str
    ours: Reader


@dataclass(frozen=True)
class Experiment:
    """One of the tutorial's experiments: ``settings`` are its ``aevb fit MODEL`` flags.

    ``length`` is the flag that sets how long it trains, and ``scale(value, factor)`` scales that flag's
    value. Image experiments (``--dataset`` among the settings) also take ``--data-dir``. ``curve`` maps an
    epoch to the tutorial's published test ELBO; ``figures`` maps each figure file a run writes to a caption.
    """

    model: str
    title: str
    section: str
    summary: str
    settings: dict[str, str]
    length: str
    scale: Callable[[str, float], str]
    figures: dict[str, str]
    published: tuple[Published, ...] = ()
    curve: dict[int, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    headline: tuple[str, ...] = ("test_elbo",)


def scale_epochs(value: str, factor: float) -> str:
    return str(max(1, round(int(value) * factor)))


def scale_phases(value: str, factor: float) -> str:
    """'alternate:E,M' with both phase lengths scaled (at least one step each)."""
    e_steps, m_steps = value.removeprefix("alternate:").split(",")
    return f"alternate:{scale_epochs(e_steps, factor)},{scale_epochs(m_steps, factor)}"


def image_settings(epochs: int) -> dict[str, str]:
    """The tutorial's VAE settings (§5.3), which §5.4's conditional VAE shares."""
    return {"--dataset": "mnist", "--likelihood": "cb", "--latent-dim": "20", "--hidden": "500,500",
            "--batch-size": "100", "--lr": "0.0003", "--epochs": str(epochs)}


def vae_figures(model: str) -> dict[str, str]:
    return {f"{model}_learning_curve.png": "Training and test ELBO per epoch (nats per image).",
            f"{model}_decoder_parameters.png": "Decoder parameters λ_θ(z) (continuous-Bernoulli means) for draws z from the prior.",
            f"{model}_samples.png": "Samples x ~ p_θ(x|z) for draws z from the prior."}


NOT_REPORTED = "not reported (the tutorial evaluates the ELBO only)"
IMAGE_RESULTS = (Published("importance-weighted bound on log p(x) (IWAE, nats per image)", NOT_REPORTED, final("iwae_log_likelihood")),
                 Published("bits per dimension (from the IWAE bound)", NOT_REPORTED, final("bits_per_dim")))
CB_NOTE = "Continuous-Bernoulli log-densities can be positive, so these ELBOs are positive (nats per image)."

EXPERIMENTS: dict[str, Experiment] = {
    "fa-1": Experiment(
        "fa", "Factor analysis, experiment 1: joint AEVB", "§5.2",
        "x = Wz + noise with L = 2, D = 3 on the tutorial's synthetic data; phi and theta stepped together, the "
        "test ELBO (estimated) and the exact test evidence recorded after every step.",
        {"--experiment": "1", "--epochs": "35", "--batch-size": "32", "--lr": "0.01", "--latent-dim": "2",
         "--posterior": "full", "--estimator": "aevb"},
        "--epochs", scale_epochs,
        {"fa_learning_curve.png": "Estimated test ELBO and exact test log evidence after every step; below, "
                                  "generated (orange) against test (blue) points at steps 5, 100 and 800: the predictive checks."},
        (Published("exact test log evidence (nats per example)", "approaches the true model's (a curve, no number printed)",
                   final("test_log_evidence")),
         Published("the true model's test log evidence", "the curve's target line", final("true_log_evidence")),
         Published("exact-EM (maximum-likelihood) fit's test evidence minus ours", "not reported", final("gap_to_mle")),
         Published("variational gap: exact evidence − exact ELBO", "positive and small: the ELBO stays below the evidence",
                   final("variational_gap"))),
        headline=("test_log_evidence", "gap_to_mle"),
    ),
    "fa-2": Experiment(
        "fa", "Factor analysis, experiment 2: EM phases", "§5.2",
        "The EM view: 1000 steps on phi only (approximate E-step), then 1000 on theta only (approximate M-step), "
        "two rounds, on the same synthetic data.",
        {"--experiment": "2", "--schedule": "alternate:1000,1000", "--batch-size": "32", "--lr": "0.01", "--latent-dim": "2"},
        "--schedule", scale_phases,
        {"fa_em_phases.png": "Test ELBO (estimated and exact) and exact test evidence per step; shaded: phi-only "
                             "phases, unshaded: theta-only phases."},
        (Published("largest change of the test evidence within a phi-only phase", "0: the evidence is constant",
                   evidence_change_in_e_phases),
         Published("variational gap at the end of the last phi-only phase", "≈ 0: the ELBO becomes tight", gap_after_last_e_phase),
         Published("variational gap at the end (after a theta-only phase)", "> 0: the ELBO is no longer tight",
                   final("variational_gap")),
         Published("exact test log evidence at the end", "rises in theta-only phases (a curve, no number printed)",
                   final("test_log_evidence"))),
        headline=("test_log_evidence", "variational_gap"),
    ),
    "vae": Experiment(
        "vae", "Variational autoencoder", "§5.3",
        "x ~ product of continuous Bernoullis(λ_θ(z)), z ~ N(0, I_20); MLP encoder and decoder 500-500 with dropout "
        "0.1, on dequantized pixels.",
        image_settings(46), "--epochs", scale_epochs,
        {**vae_figures("vae"), "vae_tsne.png": "t-SNE of the test set's posterior means E_q[z|x], coloured by digit."},
        (Published("test ELBO after training (nats per image)", "1788 (epoch 46)", final("test_elbo")), *IMAGE_RESULTS),
        curve={1: 1655, 2: 1716, 3: 1745, 4: 1755, 5: 1759, 6: 1766, 7: 1771, 8: 1771, 9: 1773, 10: 1777, 46: 1788},
        notes=("Batch size 100 as in the tutorial's text (its published notebook uses 32).", CB_NOTE),
        headline=("test_elbo", "iwae_log_likelihood"),
    ),
    "cvae": Experiment(
        "cvae", "Conditional VAE", "§5.4",
        "p(x|y) with a one-hot label y: x ~ PCB(λ_θ(y, z)), z ~ N(μ_θ(y), σ_θ(y)), a learned prior; q(z|x, y) "
        "diagonal Gaussian; the VAE's hyperparameters.",
        {**image_settings(69), "--variant": "full"}, "--epochs", scale_epochs,
        {**vae_figures("cvae"), "cvae_samples.png": "Class-conditional samples x ~ p(x|y), one row per label y.",
         "cvae_tsne.png": "t-SNE of the test set's posterior means E_q[z|x, y], coloured by digit."},
        (Published("test ELBO after training (nats per image, given the label)", "1820 (epoch 69)", final("test_elbo")),
         *IMAGE_RESULTS),
        curve={10: 1773, 69: 1820},
        notes=("The IWAE bound and bits per dimension are of log p(x|y), given the label.", CB_NOTE),
        headline=("test_elbo", "iwae_log_likelihood"),
    ),
    "gmvae": Experiment(
        "gmvae", "Gaussian-mixture VAE", "§5.5",
        "y ~ Categorical(1/C), z|y ~ N(μ_θ(y), σ_θ(y)), x|z ~ Bernoulli(p_θ(z)) on binarized pixels; q(y|x) q(z|x, y), "
        "with the exact sum over y (the marginal estimator). Clusters are the argmax of q(y|x).",
        {"--dataset": "mnist", "--components": "10", "--latent-dim": "64", "--hidden": "512,512", "--batch-size": "100",
         "--lr": "0.001", "--estimator": "marginal", "--variant": "gmm", "--epochs": "100"},
        "--epochs", scale_epochs,
        {"gmvae_learning_curves.png": "Per epoch on the test set: ELBO (including −log C), conditional entropy "
                                      "H(q(y|x)) and clustering accuracy.",
         "gmvae_cluster_generations.png": "Generations p(x = 1|z), z ~ p(z|y), one row per cluster y, rows ordered by "
                                          "the label each cluster is matched to (the tutorial ordered them by hand)."},
        (Published("clustering accuracy (Hungarian matching)", "0.835 (epoch 100)", final("cluster_accuracy")),
         Published("conditional entropy H(q(y|x)) (nats)", "about 0.11", final("conditional_entropy")),
         Published("test ELBO without −log C (the tutorial's printed convention)", "about −80.5 to −81 (epochs 70-79)",
                   final("test_elbo_without_log_c")),
         Published("test ELBO, the bound itself (with −log C)", "about −82.8 to −83.3 (its printed values minus log 10)",
                   final("test_elbo")),
         Published("normalized mutual information with the labels", "not reported", final("nmi"))),
        notes=("The ELBO's KL(q(y|x) ‖ p(y)) term is −H(q(y|x)) + log C: the tutorial's printed ELBO leaves out the "
               "constant −log C (−2.303 nats for C = 10). Our test ELBO includes it, so it is a bound on log p(x); "
               "the row 'without −log C' adds it back to compare with the tutorial's numbers.",),
        headline=("cluster_accuracy", "test_elbo"),
    ),
    "vrnn": Experiment(
        "vrnn", "Variational RNN", "§5.6",
        "Images read row by row as sequences: x_t ~ Bernoulli(p_θ(h_t, z_t)), z_t ~ N(μ_θ(h_t), σ_θ(h_t)), a "
        "2-layer LSTM of 256 shared with the filtering posterior q(z_t | x_t, h_t); latent 2 per step.",
        {"--dataset": "mnist", "--latent-dim": "2", "--hidden": "256", "--batch-size": "100", "--lr": "0.001", "--epochs": "7"},
        "--epochs", scale_epochs,
        {"vrnn_learning_curve.png": "Training and test ELBO per epoch (nats per sequence; on MNIST with the "
                                    "tutorial's published curve).",
         "vrnn_decoder_parameters.png": "Generations from the prior, row by row: each row's Bernoulli means given the rows above.",
         "vrnn_samples.png": "Generations from the prior, row by row: samples.",
         "vrnn_generation.gif": "The generation as an animation, one row per frame.",
         "vrnn_tsne.png": "t-SNE of the test set's posterior means E_q[z_t], concatenated over t, coloured by digit."},
        (Published("test ELBO after training (nats per sequence)", "−78.5 (epoch 7)", final("test_elbo")),
         Published("importance-weighted bound on log p(x_1:T) (IWAE)", NOT_REPORTED, final("iwae_log_likelihood"))),
        curve=dict(enumerate(TUTORIAL_VRNN_TEST_ELBO, start=1)),
        notes=("The tutorial's code draws z_t with sample() rather than rsample(), so no gradient flows through z_t; "
               "ours is reparameterized. The tutorial also stops early.",),
        headline=("test_elbo", "iwae_log_likelihood"),
    ),
}

# The tour's budget on scikit-learn's digits, as flags over the tutorial's: under 5 minutes on 2 CPU cores.
TOUR = {"fa-1": {}, "fa-2": {"--schedule": "alternate:500,500"}, "vae": {"--epochs": "100"},
        "cvae": {"--epochs": "100"}, "gmvae": {"--epochs": "60"}, "vrnn": {"--epochs": "20"}}
QUICK_TOUR = {"fa-1": {"--epochs": "1"}, "fa-2": {"--schedule": "alternate:10,10"},
              "vae": {"--epochs": "1", "--hidden": "32,32", "--iwae": "4"},
              "cvae": {"--epochs": "1", "--hidden": "32,32", "--iwae": "4"},
              "gmvae": {"--epochs": "1", "--hidden": "32,32", "--latent-dim": "4"},
              "vrnn": {"--epochs": "1", "--hidden": "16", "--iwae": "4"}}


@dataclass(frozen=True)
class Planned:
    """An experiment with the flags it will run with."""

    name: str
    experiment: Experiment
    flags: dict[str, str]

    @property
    def argv(self) -> list[str]:
        return [s for item in self.flags.items() for s in item]

    @property
    def command(self) -> str:
        return shlex.join(["aevb", "fit", self.experiment.model, *self.argv])


def plan(names: list[str], dataset: str = "mnist", data_dir: str | None = None, scale: float = 1.0, seed: int = 0,
         budget: dict[str, dict[str, str]] | None = None) -> list[Planned]:
    """The experiments ``names`` (or 'all') with the tutorial's settings, their length scaled by ``scale``.

    Image experiments run on ``dataset`` (with ``data_dir``); ``budget`` maps an experiment to flags
    that replace the tutorial's (the tour's).
    """
    names = list(EXPERIMENTS) if "all" in names else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise UsageError(f"unknown experiment {unknown[0]!r}: use all or some of {', '.join(EXPERIMENTS)}")
    planned = []
    for name in names:
        experiment = EXPERIMENTS[name]
        flags = dict(experiment.settings)
        flags[experiment.length] = experiment.scale(flags[experiment.length], scale)
        if "--dataset" in flags:
            flags["--dataset"] = dataset
            if data_dir is not None:
                flags["--data-dir"] = data_dir
        flags.update((budget or {}).get(name, {}))
        flags["--seed"] = str(seed)
        planned.append(Planned(name, experiment, flags))
    return planned


def tour(quick: bool = False, seed: int = 0) -> list[Planned]:
    """Every experiment briefly on scikit-learn's digits (``quick``: a tiny budget, for tests)."""
    return plan(["all"], dataset="digits", seed=seed, budget=QUICK_TOUR if quick else TOUR)


def available_models() -> set[str]:
    from aevb import registry

    return set(registry.names())


def complete(run_dir: Path) -> dict | None:
    """The provenance of a finished run directory (written last, atomically), or None."""
    path = run_dir / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() and (run_dir / "summary.json").is_file() else None


def comparable(flags: dict[str, str]) -> dict[str, str]:
    """The flags that decide a run's results (where the data lie does not)."""
    return {k: v for k, v in flags.items() if k != "--data-dir"}


def run(planned: list[Planned], out: Path, progress: bool = True, resume: bool = True) -> dict[str, str]:
    """Fit every planned experiment into ``out/<name>``; returns name -> status for the report.

    Status is 'fitted', 'kept' (``resume``: a complete run with the same settings was there) or
    'unavailable' (its model is not installed). With ``resume``, an interrupted run is continued from its
    checkpoint, and a complete run with other settings is an error, raised before anything is fitted; without,
    every run is fitted afresh.
    """
    from aevb import runs

    models = available_models()
    statuses, todo = {}, []
    for p in planned:
        previous = complete(out / p.name)
        if not resume and runs.status(out / p.name):  # the tour fits afresh: an earlier run of aevb's goes
            runs.remove_run(out / p.name)
        if p.experiment.model not in models:
            statuses[p.name] = "unavailable"
            log(f"{p.name}: skipped, model {p.experiment.model} is not installed (aevb fit --help lists those that are)")
        elif resume and previous and comparable(previous["flags"]) == comparable(p.flags):
            statuses[p.name] = "kept"
            log(f"{p.name}: kept the complete run in {out / p.name} (same settings)")
        elif resume and previous:
            raise UsageError(f"{out / p.name} holds a run with other settings ({previous['command']}); "
                             "use another --out, or delete that folder to fit it again")
        else:
            todo.append(p)
    check_data(todo)
    for n, p in enumerate(todo, start=1):
        log(f"[{n}/{len(todo)}] {p.name} (tutorial {p.experiment.section}): {p.command} --out {out / p.name}")
        summary = fit(p, out / p.name, progress, resume)
        statuses[p.name] = "fitted"
        log(f"      done in {complete(out / p.name)['wall_seconds']:.1f} s: "
            + ", ".join(f"{k} {summary[k]:.4g}" for k in p.experiment.headline if isinstance(summary.get(k), float)))
    return {p.name: statuses[p.name] for p in planned}


def check_data(planned: list[Planned]) -> None:
    """Read each data set the planned fits train on, once, before any is fitted: a missing or damaged one is one
    line (DataError) at the start, not an error after hours of other fits."""
    from aevb.data import load_dataset

    for dataset, data_dir in dict.fromkeys((p.flags["--dataset"], p.flags.get("--data-dir")) for p in planned
                                           if "--dataset" in p.flags):
        load_dataset(dataset, data_dir)


def fit(planned: Planned, run_dir: Path, progress: bool, resume: bool) -> dict:
    """``aevb fit`` one planned experiment into ``run_dir`` (``resume``: continuing an interrupted run there),
    then its provenance; returns the summary."""
    from aevb import fitting, registry
    from aevb.runs import write_json

    cls = registry.resolve(planned.experiment.model)
    start = time.perf_counter()
    summary = fitting.run_fit(cls, fitting.parse_fit_args(cls, planned.argv), run_dir, progress, resume=resume)
    write_json(run_dir / PROVENANCE, {
        "experiment": planned.name, "command": planned.command, "flags": planned.flags,
        "wall_seconds": time.perf_counter() - start, "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "versions": software_versions(),
    })
    return summary


def software_versions() -> dict[str, str]:
    import numpy as np
    import torch

    return {"aevb": importlib.metadata.version("aevb"), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_threads()}


def cpu_threads() -> str:
    import torch

    n = torch.get_num_threads()
    return f"cpu, {n} torch thread{'s' * (n != 1)}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
