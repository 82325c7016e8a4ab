"""The tutorial's experiments with its settings (``aevb reproduce``), and a brief tour of them (``aevb tour``).

``EXPERIMENTS`` holds each experiment of the tutorial, and ``vae-nll``, a literature anchor from outside it:
the model, the ``aevb fit`` flags that are the source's settings, the numbers it published (with the rule
that judges ours against them) and the figures it shows. ``plan`` turns a selection into
``aevb fit`` command lines (at a scale of the tutorial's length, on a chosen data set, or with the tour's
budget); ``run`` fits them one after the other, each into ``OUT/<experiment>``, and diagnoses each fitted model's
E-step (``aevb diagnose``, with the plan's ``Diagnosis``). Called again with
``resume``, an interrupted ``run`` continues where it stopped, inside the experiment it was fitting (from
its last checkpoint); a complete run with the same settings is kept, not fitted again.

    from aevb import reproduce, report
    statuses = reproduce.run(reproduce.plan(["vae"], dataset="digits", scale=0.1), Path("runs/r"))
    report.write_report(Path("runs/r"), statuses, "aevb reproduce vae --dataset digits --epochs-scale 0.1")
"""
from __future__ import annotations

import contextlib
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from aevb.arguments import LocalEStep
from aevb.errors import UsageError
from aevb.schedules import Schedule
from aevb.tutorial import TUTORIAL_VRNN_TEST_ELBO

PROVENANCE = "provenance.json"  # written into each run directory: the command, its flags, wall time, versions
History = list[dict]
Reader = Callable[[dict, History], "float | None"]


def final(key: str) -> Reader:
    """Our number: ``key`` of the run's summary."""
    return lambda summary, history: summary.get(key)


def negative(key: str) -> Reader:
    """Our negative log-likelihood: minus ``key`` of the run's summary (None where it has none)."""
    return lambda summary, history: None if key not in summary else -summary[key]


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


Settings = dict  # a run's settings: its flags (config.json "args"), model config and resolved summary entries


@dataclass(frozen=True)
class Published:
    """One of the tutorial's results, as it states it, how to read our counterpart off a run, and how to judge it.

    ``value`` is the tutorial's number where it prints one: ours within ``tolerance`` of it is "reproduced",
    beyond it "better" or "worse" by ``higher_is_better``. A statement without a number (e.g. "0: the evidence
    is constant") has ``holds``, a test of ours. ``final``: a number the tutorial states at the end of its
    training, comparable only with a run of the same length; otherwise (a property of any length of run) only
    the other settings and the data must match.
    """

    quantity: str
    tutorial: str
    ours: Reader
    value: float | None = None
    tolerance: float = 0.0
    higher_is_better: bool = True
    holds: Callable[[float], bool] | None = None
    final: bool = True

    def verdict(self, ours: float | None) -> str | None:
        """reproduced, better or worse (None: no rule, or no number of ours)."""
        if ours is None or (self.value is None and self.holds is None):
            return None
        if self.value is not None:
            if abs(ours - self.value) <= self.tolerance:
                return "reproduced"
            return "better" if (ours > self.value) == self.higher_is_better else "worse"
        return "reproduced" if self.holds(ours) else "worse"

    @property
    def rule(self) -> str:
        if self.value is not None:
            return f"within {self.tolerance:g} of {self.value:g}"
        return "the statement holds" if self.holds else "no rule: not judged"


@dataclass(frozen=True)
class Experiment:
    """One experiment: ``settings`` are its ``aevb fit MODEL`` flags, the tutorial's (or the source's).

    ``describe(settings)`` says in a sentence what a run fitted, from that run's own settings. ``length`` is the
    flag that sets how long it trains, and ``scale(value, factor)`` scales that flag's value. Image experiments
    (``--dataset`` among the settings) also take ``--data-dir``. ``curve`` maps an epoch to the published test
    ELBO (our metric ``curve_key``); ``figures`` maps each figure file a run writes to a caption. ``evaluations``
    are importance-sample counts K of IWAE bounds computed after the fit (key ``iwae_log_likelihood_k{K}``); with
    ``refine`` local E-steps, each also with the refined q* as proposal (key ``iwae_log_likelihood_refined_k{K}``).
    """

    model: str
    title: str
    section: str
    describe: Callable[[Settings], str]
    settings: dict[str, str]
    length: str
    scale: Callable[[str, float], str]
    figures: dict[str, str]
    published: tuple[Published, ...] = ()
    curve: dict[int, float] = field(default_factory=dict)
    curve_key: str = "test_elbo"  # the metric the published curve shows
    notes: tuple[str, ...] = ()
    headline: tuple[str, ...] = ("test_elbo",)
    evaluations: tuple[int, ...] = ()
    refine: int = 0
    source: str = "the tutorial"

    @property
    def origin(self) -> str:
        """Where it comes from: 'tutorial §5.3', or its source."""
        return f"tutorial {self.section}" if self.source == "the tutorial" else self.source


def scale_epochs(value: str, factor: float) -> str:
    return str(max(1, round(int(value) * factor)))


def scale_phases(value: str, factor: float) -> str:
    """'alternate:E,M' with both phase lengths scaled (at least one step each)."""
    schedule = Schedule.parse(value)
    return str(replace(schedule, e_steps=max(1, round(schedule.e_steps * factor)),
                       m_steps=max(1, round(schedule.m_steps * factor))))


def image_settings(epochs: int) -> dict[str, str]:
    """The tutorial's VAE settings (§5.3), which §5.4's conditional VAE shares."""
    return {"--dataset": "mnist", "--likelihood": "cb-clamped", "--latent-dim": "20", "--hidden": "500,500",
            "--batch-size": "100", "--lr": "0.0003", "--epochs": str(epochs)}


LIKELIHOOD_NAMES = {"cb": "continuous Bernoullis", "cb-clamped": "continuous Bernoullis with torch's clamped normalizer",
                    "bernoulli": "Bernoullis", "gaussian": "Gaussians"}
TRANSFORM_NAMES = {"dequantize": "dequantized pixels", "binarize": "pixels binarized at 0.5",
                   "static-binarize": "statically binarized pixels (each drawn once from Bernoulli(intensity))",
                   "dynamic-binarize": "dynamically binarized pixels", "none": "values as they are"}


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def widths(hidden) -> str:
    return "-".join(map(str, hidden))


def training(s: Settings) -> str:
    """How long and how a run trained, from its settings."""
    decay = (f", decayed by {s['lr_gamma']:g} after epochs {', '.join(map(str, s['lr_milestones']))}"
             if s.get("lr_milestones") else "")
    return (f"{plural(s['epochs'], 'epoch')} ({plural(s['steps'], 'step')}) of batch {s['batch_size']} on {s['dataset']}, "
            f"Adam {s['lr']:g}{decay}, seed {s['seed']}.")


def describe_fa_1(s: Settings) -> str:
    return (f"x = Wz + noise with L = {s['latent_dim']}, D = {s['data_dim']} on the tutorial's synthetic data; phi and "
            f"theta stepped together, {s['steps']} steps of batch {s['batch_size']} (Adam {s['lr']:g}, a "
            f"{s['posterior']}-covariance posterior), the test ELBO (estimated) and the exact test evidence recorded "
            "after every step.")


def describe_fa_2(s: Settings) -> str:
    schedule = Schedule.parse(s["schedule"])
    if schedule.only:
        return f"The EM view with schedule {schedule}: {s['steps']} steps in all, on the tutorial's synthetic data."
    e_steps, m_steps = schedule.e_steps, schedule.m_steps
    rounds = s["steps"] / (e_steps + m_steps)
    return (f"The EM view: {e_steps} steps on phi only (approximate E-step), then {m_steps} on theta only (approximate "
            f"M-step), {rounds:g} round{'s' * (rounds != 1)} ({s['steps']} steps of batch {s['batch_size']}, Adam "
            f"{s['lr']:g}), on the tutorial's synthetic data.")


def describe_vae(s: Settings) -> str:
    return (f"x ~ product of {LIKELIHOOD_NAMES[s['likelihood']]}(λ_θ(z)), z ~ N(0, I_{s['latent_dim']}); MLP encoder "
            f"and decoder {widths(s['hidden'])} with dropout {s['dropout']:g}, on {TRANSFORM_NAMES[s['transform']]}. "
            + training(s))


def describe_cvae(s: Settings) -> str:
    decoder_input, prior = {"full": ("y, z", "N(μ_θ(y), σ_θ(y)), a learned prior"),
                            "prior-only": ("z", "N(μ_θ(y), σ_θ(y)), a learned prior"),
                            "decoder-only": ("y, z", "N(0, I)")}[s["variant"]]
    return (f"p(x|y) with a one-hot label y: x ~ product of {LIKELIHOOD_NAMES[s['likelihood']]}(λ_θ({decoder_input})), "
            f"z ~ {prior}, latent {s['latent_dim']} (variant {s['variant']}); q(z|x, y) diagonal Gaussian; MLPs "
            f"{widths(s['hidden'])} with dropout {s['dropout']:g}, on {TRANSFORM_NAMES[s['transform']]}. " + training(s))


def describe_gmvae(s: Settings) -> str:
    structure = ("z|y ~ N(μ_θ(y), σ_θ(y)), x|z ~ Bernoulli(p_θ(z))" if s["variant"] == "gmm"
                 else "z ~ N(0, I), x|y, z ~ Bernoulli(p_θ(y, z)) (M2)")
    return (f"y ~ Categorical(1/{s['num_components']}), {structure}, latent {s['latent_dim']}, MLPs "
            f"{widths(s['hidden'])}, on {TRANSFORM_NAMES[s['transform']]}; q(y|x) q(z|x, y), trained with the "
            f"{s['estimator'] or 'marginal'} estimator. Clusters are the argmax of q(y|x). " + training(s))


def describe_vrnn(s: Settings) -> str:
    return (f"Images read row by row as sequences: x_t ~ product of {LIKELIHOOD_NAMES[s['likelihood']]}(p_θ(h_t, z_t)), z_t ~ "
            f"N(μ_θ(h_t), σ_θ(h_t)), a 2-layer LSTM of {s['hidden_dim']} shared with the filtering posterior q(z_t | x_t, h_t); "
            f"latent {s['latent_dim']} per step, on {TRANSFORM_NAMES[s['transform']]}. " + training(s))


def vae_figures(model: str) -> dict[str, str]:
    return {f"{model}_learning_curve.png": "Training and test ELBO per epoch (nats per image).",
            f"{model}_decoder_parameters.png": "Decoder parameters λ_θ(z) (sigmoid of the decoder's outputs, not the "
                                               "distribution's means) for draws z from the prior.",
            f"{model}_samples.png": "Samples x ~ p_θ(x|z) for draws z from the prior."}


NOT_REPORTED = "not reported (the tutorial evaluates the ELBO only)"


def image_results(of: str = "log p(x)") -> tuple[Published, ...]:
    """An image model's report rows of its IWAE bound and bits/dim, both of ``of``: log p(x), or log p(x|y) for a
    conditional model."""
    return (Published(f"importance-weighted bound on {of} (IWAE, nats per image)", NOT_REPORTED,
                      final("iwae_log_likelihood")),
            Published(f"bits per dimension (from the IWAE bound on {of})", NOT_REPORTED, final("bits_per_dim")))


CB_NOTE = ("The tutorial's code uses torch's ContinuousBernoulli, whose normalizer is clamped in float32 (its log C is "
           "stuck beyond |logit| ≈ 15.9, with zero gradient beyond 16.6). Its setting here is therefore `--likelihood "
           "cb-clamped`, the same density, so that its numbers and ours are the same quantity. aevb's default, "
           "`--likelihood cb`, is exact (aevb.continuous_bernoulli): a decoder can then reach pixels near 0 and 1, and "
           "its ELBO and IWAE bound are higher (its bits/dim lower) and comparable with the literature, but not with "
           "the tutorial's numbers. Continuous-Bernoulli log-densities can be positive, so these ELBOs are positive.")
ELBO_TOLERANCE = 5.0  # nats per image: a few seeds' spread at the tutorial's length

EXPERIMENTS: dict[str, Experiment] = {
    "fa-1": Experiment(
        "fa", "Factor analysis, experiment 1: joint AEVB", "§5.2", describe_fa_1,
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
                   final("variational_gap"), holds=lambda gap: 0 <= gap <= 0.05)),
        headline=("test_log_evidence", "gap_to_mle"),
    ),
    "fa-2": Experiment(
        "fa", "Factor analysis, experiment 2: EM phases", "§5.2", describe_fa_2,
        {"--experiment": "2", "--schedule": "alternate:1000,1000", "--batch-size": "32", "--lr": "0.01", "--latent-dim": "2"},
        "--schedule", scale_phases,
        {"fa_em_phases.png": "Test ELBO (estimated and exact) and exact test evidence per step; shaded: phi-only "
                             "phases, unshaded: theta-only phases."},
        (Published("largest change of the test evidence within a phi-only phase", "0: the evidence is constant",
                   evidence_change_in_e_phases, holds=lambda change: change <= 1e-5, final=False),
         Published("variational gap at the end of the last phi-only phase", "≈ 0: the ELBO becomes tight",
                   gap_after_last_e_phase, holds=lambda gap: 0 <= gap <= 0.01),
         Published("variational gap at the end (after a theta-only phase)", "> 0: the ELBO is no longer tight",
                   final("variational_gap"), holds=lambda gap: gap > 0, final=False),
         Published("exact test log evidence at the end", "rises in theta-only phases (a curve, no number printed)",
                   final("test_log_evidence"))),
        headline=("test_log_evidence", "variational_gap"),
    ),
    "vae": Experiment(
        "vae", "Variational autoencoder", "§5.3", describe_vae,
        image_settings(46), "--epochs", scale_epochs,
        {**vae_figures("vae"), "vae_tsne.png": "t-SNE of the test set's posterior means E_q[z|x], coloured by digit."},
        (Published("test ELBO after training (nats per image)", "1788 (epoch 46)", final("test_elbo"), value=1788,
                   tolerance=ELBO_TOLERANCE),
         *image_results()),
        curve={1: 1655, 2: 1716, 3: 1745, 4: 1755, 5: 1759, 6: 1766, 7: 1771, 8: 1771, 9: 1773, 10: 1777, 46: 1788},
        notes=("Batch size 100 as in the tutorial's text (its published notebook uses 32).", CB_NOTE),
        headline=("test_elbo", "bits_per_dim"),
    ),
    "cvae": Experiment(
        "cvae", "Conditional VAE", "§5.4", describe_cvae,
        {**image_settings(69), "--variant": "full"}, "--epochs", scale_epochs,
        {**vae_figures("cvae"), "cvae_samples.png": "Class-conditional samples x ~ p(x|y), one row per label y.",
         "cvae_tsne.png": "t-SNE of the test set's posterior means E_q[z|x, y], coloured by digit."},
        (Published("test ELBO after training (nats per image, given the label)", "1820 (epoch 69)", final("test_elbo"),
                   value=1820, tolerance=ELBO_TOLERANCE),
         *image_results("log p(x|y)")),
        curve={10: 1773, 69: 1820},
        notes=("The IWAE bound and bits per dimension are of log p(x|y), given the label.", CB_NOTE),
        headline=("test_elbo", "bits_per_dim"),
    ),
    "gmvae": Experiment(
        "gmvae", "Gaussian-mixture VAE", "§5.5", describe_gmvae,
        {"--dataset": "mnist", "--components": "10", "--latent-dim": "64", "--hidden": "512,512", "--batch-size": "100",
         "--lr": "0.001", "--estimator": "marginal", "--variant": "gmm", "--epochs": "100"},
        "--epochs", scale_epochs,
        {"gmvae_learning_curves.png": "Per epoch on the test set: ELBO (including −log C), conditional entropy "
                                      "H(q(y|x)) and clustering accuracy.",
         "gmvae_cluster_generations.png": "Generations p(x = 1|z), z ~ p(z|y), one row per cluster y, rows ordered by "
                                          "the label each cluster is matched to (the tutorial ordered them by hand)."},
        (Published("clustering accuracy (Hungarian matching)", "0.835 (epoch 100)", final("cluster_accuracy"),
                   value=0.835, tolerance=0.02),
         Published("conditional entropy H(q(y|x)) (nats)", "about 0.11", final("conditional_entropy"),
                   value=0.11, tolerance=0.05, higher_is_better=False),
         Published("test ELBO without −log C (the tutorial's printed convention)", "about −80.5 to −81 (epochs 70-79)",
                   final("test_elbo_without_log_c"), value=-80.75, tolerance=1.0),
         Published("test ELBO, the bound itself (with −log C)", "about −82.8 to −83.3 (its printed values minus log 10)",
                   final("test_elbo")),
         Published("normalized mutual information with the labels", "not reported", final("nmi"))),
        notes=("The ELBO's −KL(q(y|x) ‖ p(y)) term is H(q(y|x)) − log C: the tutorial's printed ELBO leaves out the "
               "constant −log C (−2.303 nats for C = 10). Our test ELBO includes it, so it is a bound on log p(x); "
               "the row 'without −log C' drops it (adds log C) to compare with the tutorial's numbers.",),
        headline=("cluster_accuracy", "test_elbo"),
    ),
    "vrnn": Experiment(
        "vrnn", "Variational RNN", "§5.6", describe_vrnn,
        {"--dataset": "mnist", "--latent-dim": "2", "--hidden": "256", "--batch-size": "100", "--lr": "0.001", "--epochs": "7"},
        "--epochs", scale_epochs,
        {"vrnn_learning_curve.png": "Training and test ELBO per epoch (nats per sequence); on MNIST the plot also "
                                    "draws the tutorial's published test ELBO.",
         "vrnn_decoder_parameters.png": "Generations from the prior, row by row: each row's Bernoulli means given the rows above.",
         "vrnn_samples.png": "Generations from the prior, row by row: samples.",
         "vrnn_generation.gif": "The generation as an animation, one row per frame.",
         "vrnn_tsne.png": "t-SNE of the test set's posterior means E_q[z_t], concatenated over t, coloured by digit."},
        (Published("test ELBO after training (nats per sequence)", "−78.5 (epoch 7)", final("test_elbo"),
                   value=-78.5, tolerance=1.0),
         Published("importance-weighted bound on log p(x_1:T) (IWAE)", NOT_REPORTED, final("iwae_log_likelihood"))),
        curve=dict(enumerate(TUTORIAL_VRNN_TEST_ELBO, start=1)),
        notes=("The tutorial's code draws z_t with sample() rather than rsample(), so no gradient flows through z_t; "
               "ours is reparameterized. The tutorial also stops early.",),
        headline=("test_elbo", "iwae_log_likelihood"),
    ),
    "vae-nll": Experiment(
        "vae", "VAE on statically binarized MNIST: a literature anchor", "not in the tutorial", describe_vae,
        {"--dataset": "mnist", "--likelihood": "bernoulli", "--transform": "static-binarize", "--latent-dim": "40",
         "--hidden": "400", "--dropout": "0", "--batch-size": "100", "--lr": "0.001", "--lr-milestones": "200,350",
         "--lr-gamma": "0.631", "--epochs": "500", "--iwae": "5000"},
        "--epochs", scale_epochs,
        {**vae_figures("vae"), "vae_tsne.png": "t-SNE of the test set's posterior means E_q[z|x], coloured by digit."},
        (Published("test negative log-likelihood, IWAE bound with K = 200 (nats)", "89.78 (pythae; paper: 89.9)",
                   negative("iwae_log_likelihood_k200"), value=89.78, tolerance=0.3, higher_is_better=False),
         Published("the same with the refined q* as proposal (100 local E-steps; nats)", "not reported",
                   negative("iwae_log_likelihood_refined_k200")),
         Published("test negative log-likelihood, IWAE bound with K = 5000 (nats)", "not reported",
                   negative("iwae_log_likelihood")),
         Published("test ELBO (nats)", "not reported", final("test_elbo"))),
        notes=("Rezende & Mohamed (2015), the VAE baseline of 'Variational Inference with Normalizing Flows': one ReLU "
               "hidden layer of 400 units in encoder and decoder, latent 40, statically binarized MNIST; they report "
               "a test NLL of 89.9. pythae's reproduction (github.com/clementchadebec/benchmark_VAE, "
               "examples/scripts/reproducibility) reaches 89.78 with 200 importance samples. Its script decays Adam's "
               "step by 10^(-1/5) at epochs 200, 350, 500, 750 and 1000 and keeps the model with the best "
               "validation loss; the VAE's training length is not in the repository (its binary-MNIST siblings "
               "train 2000 and 3280 epochs), where this experiment's setting trains 500. It trains on the 50,000 "
               "images of Larochelle's split, where this experiment's setting trains on MNIST's 60,000 with its own "
               "binarization draw.",
               "The K = 200 and K = 5000 bounds take the encoder q_phi(z|x) as proposal, as pythae's does. The "
               "refined one takes q*, a diagonal Gaussian fitted to each test image alone (100 local E-steps from "
               "q_phi, as aevb eval --refine 100 does): a bound on the same model's log p(x), tighter where q_phi "
               "is far from the posterior. pythae reports no such number, so only the first is judged.",),
        headline=("iwae_log_likelihood_k200", "iwae_log_likelihood_refined_k200", "iwae_log_likelihood"),
        evaluations=(200,),
        refine=100,
        source="Rezende & Mohamed 2015, as reproduced by pythae",
    ),
}

TUTORIAL = [name for name, e in EXPERIMENTS.items() if e.source == "the tutorial"]
# The tour's budget on scikit-learn's digits, as flags over the tutorial's: under 5 minutes on 2 CPU cores.
# The tour shows aevb's exact continuous Bernoulli (the tutorial's clamped one is for comparing with its numbers).
TOUR = {"fa-1": {}, "fa-2": {"--schedule": "alternate:500,500"}, "vae": {"--epochs": "100", "--likelihood": "cb"},
        "cvae": {"--epochs": "100", "--likelihood": "cb"}, "gmvae": {"--epochs": "60"}, "vrnn": {"--epochs": "20"}}
QUICK_TOUR = {"fa-1": {"--epochs": "1"}, "fa-2": {"--schedule": "alternate:10,10"},
              "vae": {"--epochs": "1", "--hidden": "32,32", "--iwae": "4", "--likelihood": "cb"},
              "cvae": {"--epochs": "1", "--hidden": "32,32", "--iwae": "4", "--likelihood": "cb"},
              "gmvae": {"--epochs": "1", "--hidden": "32,32", "--latent-dim": "4"},
              "vrnn": {"--epochs": "1", "--hidden": "16", "--iwae": "4"}}


@dataclass(frozen=True)
class Diagnosis:
    """What ``aevb diagnose`` runs with after each fit: test examples, importance samples K of log p(x) (where it is
    not exact), and the local E-steps."""

    examples: int
    iwae: int
    settings: LocalEStep = LocalEStep()

    @property
    def command(self) -> str:
        s = self.settings
        return (f"aevb diagnose RUN_DIR --examples {self.examples} --iwae {self.iwae} --steps {s.steps} "
                f"--samples {s.samples} --lr {s.lr:g} --eval-samples {s.eval_samples}")


DIAGNOSIS = Diagnosis(1000, 1000)  # K = 1000, not diagnose's 5000: a GMVAE's bound costs C = 10 decoder passes per draw
TOUR_DIAGNOSIS = Diagnosis(200, 100, LocalEStep(steps=50, samples=4, eval_samples=20))
QUICK_DIAGNOSIS = Diagnosis(20, 8, LocalEStep(steps=3, samples=2, eval_samples=4))


@dataclass(frozen=True)
class Planned:
    """An experiment with the flags it will run with, and the diagnosis after its fit."""

    name: str
    experiment: Experiment
    flags: dict[str, str]
    diagnosis: Diagnosis | None = DIAGNOSIS

    @property
    def argv(self) -> list[str]:
        return [s for item in self.flags.items() for s in item]

    @property
    def command(self) -> str:
        return shlex.join(["aevb", "fit", self.experiment.model, *self.argv])


def plan(names: list[str], dataset: str = "mnist", data_dir: str | None = None, scale: float = 1.0, seed: int = 0,
         budget: dict[str, dict[str, str]] | None = None, diagnosis: Diagnosis | None = DIAGNOSIS) -> list[Planned]:
    """The experiments ``names`` ('all': the tutorial's) with their settings, their length scaled by ``scale``.

    Image experiments run on ``dataset`` (with ``data_dir``); ``budget`` maps an experiment to flags
    that replace the tutorial's (the tour's); ``diagnosis`` is run after each fit (None: no diagnosis).
    """
    names = list(dict.fromkeys(n for name in names for n in (TUTORIAL if name == "all" else [name])))
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise UsageError(f"unknown experiment {unknown[0]!r}: use all (the tutorial's) or some of {', '.join(EXPERIMENTS)}")
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
        planned.append(Planned(name, experiment, flags, diagnosis))
    return planned


def tour(quick: bool = False, seed: int = 0) -> list[Planned]:
    """Every tutorial experiment briefly on scikit-learn's digits (``quick``: a tiny budget, for tests)."""
    return plan(["all"], dataset="digits", seed=seed, budget=QUICK_TOUR if quick else TOUR,
                diagnosis=QUICK_DIAGNOSIS if quick else TOUR_DIAGNOSIS)


def available_models() -> set[str]:
    from aevb import registry

    return set(registry.names())


def complete(run_dir: Path) -> dict | None:
    """The provenance of a finished run directory (written last, atomically), or None; UsageError for a damaged
    one."""
    from aevb import runs

    path = run_dir / PROVENANCE
    if not (path.is_file() and (run_dir / "summary.json").is_file()):
        return None
    advice = f"delete {run_dir} to fit it again, or use another --out"
    provenance = runs.read_json(path, advice)
    if not (isinstance(provenance, dict) and isinstance(provenance.get("flags"), dict)
            and isinstance(provenance.get("command"), str) and isinstance(provenance.get("wall_seconds"), (int, float))):
        raise UsageError(f"{path} is damaged (not the flags, command and time of a run); {advice}")
    return provenance


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
    if not resume:  # the tour fits afresh: earlier runs of aevb's go, once every one is known to be one, and free
        earlier = [out / p.name for p in planned if runs.status(out / p.name)]
        with contextlib.ExitStack() as held:
            for run_dir in earlier:
                held.enter_context(runs.locked(run_dir))  # none is being written by another process
                runs.check_removable(run_dir)
            for run_dir in earlier:
                runs.remove_run(run_dir)
    statuses, todo = {}, []
    for p in planned:
        previous = complete(out / p.name)
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
        log(f"[{n}/{len(todo)}] {p.name} ({p.experiment.origin}): {p.command} --out {out / p.name}")
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
    """``aevb fit`` one planned experiment into ``run_dir`` (``resume``: continuing an interrupted run there), its
    evaluations and diagnosis (``aevb diagnose``), then its provenance; returns the summary."""
    from aevb import fitting, registry
    from aevb.runs import software_versions, write_json

    cls = registry.resolve(planned.experiment.model)
    start = time.perf_counter()
    summary = fitting.run_fit(cls, fitting.parse_fit_args(cls, planned.argv), run_dir, progress, resume=resume)
    evaluations = {}
    for k in planned.experiment.evaluations:
        found = fitting.evaluate_run(run_dir, k, planned.experiment.refine)
        evaluations[f"iwae_log_likelihood_k{k}"] = found["iwae_log_likelihood"]
        if "iwae_log_likelihood_refined" in found:
            evaluations[f"iwae_log_likelihood_refined_k{k}"] = found["iwae_log_likelihood_refined"]
    d = planned.diagnosis
    if d:
        fitting.diagnose_run(run_dir, d.examples, d.iwae, d.settings, progress=progress)
    write_json(run_dir / PROVENANCE, {
        "experiment": planned.name, "command": planned.command, "flags": planned.flags, "evaluations": evaluations,
        "diagnosis": d.command if d else None,
        "wall_seconds": time.perf_counter() - start, "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "versions": software_versions(),
    })
    return {**summary, **evaluations}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
