"""Figures. Every function takes plain numbers/tensors and a path, and writes one PNG (an animation: one GIF).

The figures are ``matplotlib.figure.Figure`` objects drawn by the Agg canvas that ``savefig`` picks for a file,
never through pyplot: a notebook's backend and its open figures are left as they were.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from aevb.runs import write_atomically

E_PHASE_COLOUR = "tab:orange"  # shading the E-phases of a history; M-phases stay plain


def subplots(*grid: int, figsize: tuple[float, float], layout: str | None = None, **kwargs):
    """A figure of its own and its axes, as ``pyplot.subplots`` gives them, without pyplot."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(*grid, **kwargs)


SOFTWARE = "aevb"  # a PNG's Software text: how ``aevb.report`` knows a figure it may replace from a user's


def save(fig: Figure, path: Path) -> Path:
    """Write the figure to ``path`` whole or not at all (a full disk leaves the old file or none); a PNG is marked
    as aevb's."""
    metadata = {"Software": SOFTWARE} if Path(path).suffix == ".png" else None
    write_atomically(Path(path), lambda p: fig.savefig(p, dpi=120, bbox_inches="tight", metadata=metadata))
    return path


MARKED_POINTS = 30  # curves of at most this many points show them


def plot_history(ax, history: list[dict], keys: dict[str, str], x: str = "step") -> None:
    """One line per metric key in ``keys`` (key -> legend label), against ``x``; each point marked where there are
    few (a line through one point draws nothing)."""
    seen = set()
    for key, label in keys.items():
        points = [(r[x], r[key]) for r in history if key in r]
        seen.update(p[0] for p in points)
        ax.plot(*zip(*points), label=label, lw=1.2, marker="o" if len(points) <= MARKED_POINTS else None, ms=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
    if len(seen) == 1:  # one point: its own tick, in a view one unit wide (the locator wants two whole numbers)
        ax.set_xticks(sorted(seen))
        ax.set_xlim(min(seen) - 0.5, min(seen) + 0.5)
    ax.set_xlabel(x)


def add_reference_lines(ax, references: dict[str, float]) -> None:
    for (label, value), style in zip(references.items(), ("--", ":", "-.")):
        ax.axhline(value, color="k", ls=style, lw=1, label=label)


def set_evidence_ylim(ax, history: list[dict], references: dict[str, float]) -> None:
    """Show the whole evidence and test-ELBO curves (the bound, whose gap to the evidence the E-steps close), but no
    more than 6 nats below the references (a fit's first steps can start far below)."""
    top = max(references.values())
    lowest = min(r[key] for r in history for key in ("test_log_evidence", "test_elbo_exact", "test_elbo") if key in r)
    ax.set_ylim(max(lowest, top - 6) - 0.1, top + 0.3)
    ax.set_ylabel("nats per example")


def fa_learning_curve(
    history: list[dict], references: dict[str, float], snapshots: dict[int, tuple], path: Path
) -> Path:
    """Tutorial Figure 2: test ELBO and exact evidence per step, and predictive checks at a few steps.

    ``snapshots`` maps a step to (generated x, test x), each (N, D); each row of small panels shows the 2-D
    projections onto pairs of the first three coordinates of generated (orange) against test (blue) points (for
    D = 1, their histograms).
    """
    rows = len(snapshots)
    fig = Figure(figsize=(9, 3.2 + 2.2 * rows))
    grid = fig.add_gridspec(1 + rows, 3, height_ratios=[3] + [2] * rows, hspace=0.45)
    ax = fig.add_subplot(grid[0, :])
    plot_history(ax, history, {"test_elbo": "test ELBO (estimate)", "test_log_evidence": "test log evidence (exact)"})
    add_reference_lines(ax, references)
    set_evidence_ylim(ax, history, references)
    ax.legend(loc="best", fontsize=8)
    for row, (step, (generated, test)) in enumerate(sorted(snapshots.items()), start=1):
        ax.axvline(step, color="grey", lw=0.6)
        for col, (i, j) in enumerate(list(itertools.combinations(range(min(test.shape[1], 3)), 2)) or [(0, 0)]):
            inset = fig.add_subplot(grid[row, col])
            if i == j:
                inset.hist([test[:, 0], generated[:, 0]], bins=30, label=["test", "generated"])
                inset.set_title(f"step {step}: x1", fontsize=8)
            else:
                inset.scatter(test[:, i], test[:, j], s=2, alpha=0.4, label="test")
                inset.scatter(generated[:, i], generated[:, j], s=2, alpha=0.4, label="generated")
                inset.set_title(f"step {step}: x{i + 1} vs x{j + 1}", fontsize=8)
            inset.tick_params(labelsize=6)
            if row == 1 and col == 0:
                inset.legend(fontsize=6, markerscale=3)
    return save(fig, path)


def em_phases(history: list[dict], spans: list[tuple[str, int, int]], references: dict[str, float], path: Path) -> Path:
    """Tutorial Figure 3: ELBO and evidence per step, E-phases (phi only) shaded, M-phases (theta only) plain."""
    fig, ax = subplots(figsize=(9, 4))
    for phase, start, stop in spans:
        if phase == "e":
            ax.axvspan(start, stop, color=E_PHASE_COLOUR, alpha=0.12, lw=0)
    plot_history(
        ax,
        history,
        {"test_elbo": "test ELBO (estimate)", "test_elbo_exact": "test ELBO (exact)", "test_log_evidence": "test log evidence"},
    )
    add_reference_lines(ax, references)
    set_evidence_ylim(ax, history, references)
    ax.set_title("shaded: E-phases (inference parameters only); unshaded: M-phases (generative only)", fontsize=9)
    ax.legend(loc="best", fontsize=8)
    return save(fig, path)


def curves(history: list[dict], keys: dict[str, str], path: Path, x: str = "epoch", title: str = "") -> Path:
    """Tutorial Figure 5: metrics (key -> legend label), e.g. the test ELBO in nats per example, per ``x``
    ('epoch' or 'step')."""
    fig, ax = subplots(figsize=(6, 4))
    plot_history(ax, history, keys, x=x)
    ax.set_ylabel("nats per example")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def epoch_panels(history: list[dict], panels: dict[str, str], path: Path, title: str = "") -> Path:
    """Tutorial Figure 10: one panel per metric (key -> y-axis label) against the epoch, side by side."""
    panels = {key: label for key, label in panels.items() if any(key in r for r in history)}
    fig, axes = subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels.items()):
        plot_history(ax, history, {key: label}, x="epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def tile(images: np.ndarray) -> np.ndarray:
    """Images (R, C, H, W) as one R x C canvas, one white pixel between neighbours."""
    rows, cols, height, width = images.shape
    canvas = np.ones((rows * (height + 1) - 1, cols * (width + 1) - 1))
    for r in range(rows):
        for c in range(cols):
            canvas[r * (height + 1):r * (height + 1) + height, c * (width + 1):c * (width + 1) + width] = images[r, c]
    return np.clip(canvas, 0, 1)


def as_grid(x: Tensor, shape: Sequence[int], columns: int) -> np.ndarray:
    """Flat examples (N, D) -> (rows, columns, H, W) for ``image_grid``; a short last row is left blank (NaN).

    Examples of ``shape`` (D,) become 1-pixel-high strips.
    """
    height, width = shape if len(shape) == 2 else (1, int(np.prod(shape)))
    rows = -(-len(x) // columns)
    padded = torch.full((rows * columns, height * width), math.nan)
    padded[:len(x)] = x.detach().cpu().reshape(len(x), -1)
    return padded.reshape(rows, columns, height, width).numpy()


def image_grid(images: np.ndarray, path: Path, row_labels: Sequence[str] | None = None, title: str = "",
               value_range: Sequence[float] = (0.0, 1.0)) -> Path:
    """Tutorial Figures 6, 8, 9: images (R, C, H, W) as an R x C grid, rows optionally labelled; grey levels
    from ``value_range``'s low (black) to its high (white), values outside it (a Gaussian likelihood's draws)
    clipped, as the title then says."""
    rows, cols, height, width = images.shape
    low, high = value_range
    if (low, high) != (0, 1):
        title = f"{title}; grey levels from {low:g} to {high:g}"
    values = images[~np.isnan(images)]  # not the blanks
    outside = float(np.mean((values < low) | (values > high)))
    if outside:
        title = f"{title} ({outside:.0%} of the values lie outside [{low:g}, {high:g}], shown clipped)"
    fig, ax = subplots(figsize=(0.45 * cols * max(1, width / height) + 0.5, 0.45 * rows + 0.4))
    ax.imshow(tile((images - low) / (high - low)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (height + 1) + height / 2 for r in range(rows)] if row_labels else [], row_labels or [])
    ax.tick_params(length=0, labelsize=8)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def rows_animation(images: np.ndarray, path: Path, title: str = "", fps: int = 4,
                   value_range: Sequence[float] = (0.0, 1.0)) -> Path:
    """Sequences generated step by step, as an animated GIF: images (R, C, T, D), grey levels from
    ``value_range``'s low (black) to its high (white), frame t showing rows 1..t of every image (rows still to
    come in grey), the finished grid held for a moment at the end."""
    from matplotlib.animation import FuncAnimation, PillowWriter  # only this figure needs them

    low, high = value_range
    images = (images - low) / (high - low)
    rows, cols, steps, width = images.shape
    fig, ax = subplots(figsize=(0.45 * cols * max(1, width / steps) + 0.5, 0.45 * rows + 0.4))
    shown = ax.imshow(tile(images), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])

    def frame(t: int):
        partial = images.copy()
        partial[:, :, t + 1:] = 0.5
        shown.set_data(tile(partial))
        ax.set_title(f"{title}: step {t + 1} of {steps}", fontsize=9)
        return (shown,)

    frames = list(range(steps)) + [steps - 1] * 2 * fps
    animation = FuncAnimation(fig, frame, frames=frames)
    write_atomically(Path(path), lambda p: animation.save(p, writer=PillowWriter(fps=fps)))
    return path


def image_like(shape: Sequence[int]) -> bool:
    """Whether examples of ``shape`` show best as images: (H, W) images, and sequences (T, D) of as many steps
    as values per step, within a factor of 4 (images read row by row); a longer or wider sequence is a series."""
    return len(shape) == 2 and shape[0] <= 4 * shape[1] and shape[1] <= 4 * shape[0]


SERIES_SHOWN = 12  # panels of a sequence figure
SERIES_LINES = 8  # at most this many values per step are drawn as lines, more as a heat map


def series(x: np.ndarray, path: Path, title: str = "", labels: Sequence[str] | None = None,
           reference: np.ndarray | None = None, reference_labels: Sequence[str] | None = None) -> Path:
    """Sequences (N, T, D) that are not images: a panel for each of the first 12 (titled by its ``labels``), step
    t across, beside as many of the ``reference`` sequences (the test data, titled by ``reference_labels``) when
    given; D <= 8 values per step as lines (their points marked where there are few), more as a heat map (value
    index up); every panel on the one scale of the values shown, none clipped."""
    groups = [("samples", x[:SERIES_SHOWN], labels)]
    if reference is not None:
        groups.append(("test data", reference[:SERIES_SHOWN], reference_labels))
    values = np.concatenate([shown for _, shown, _ in groups])
    low, high = float(values.min()), float(values.max())
    low, high = (low - 0.5, high + 0.5) if high == low else (low, high)  # constant values: a scale around them
    columns = min(len(groups[0][1]), 4 // len(groups))
    rows = -(-max(len(shown) for _, shown, _ in groups) // columns)
    fig = Figure(figsize=(3.2 * columns * len(groups), 1.8 * rows + 0.6), layout="constrained")
    steps, width = x.shape[1:]
    heat_map = width > SERIES_LINES
    subfigures = fig.subfigures(1, len(groups) + heat_map, squeeze=False,  # and a slim one for a heat map's scale
                                width_ratios=[1] * len(groups) + [0.06 * len(groups)] * heat_map)[0]
    for subfigure, (name, shown, names) in zip(subfigures, groups):
        axes = subfigure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
        if len(groups) > 1:
            subfigure.suptitle(name, fontsize=9)
        for k, (ax, example) in enumerate(zip(axes.flat, shown)):
            if names is not None:
                ax.set_title(names[k], fontsize=8)
            if not heat_map:
                for d in range(width):
                    ax.plot(np.arange(1, steps + 1), example[:, d], linewidth=0.8, label=f"x{d + 1}",
                            marker="o" if steps <= MARKED_POINTS else None, markersize=2)
                ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
            else:
                image = ax.imshow(example.T, aspect="auto", origin="lower", cmap="viridis", vmin=low, vmax=high,
                                  interpolation="nearest", extent=(0.5, steps + 0.5, 0.5, width + 0.5))
        for ax in axes.flat[len(shown):]:
            ax.set_axis_off()
        for ax in axes.flat[max(0, len(shown) - columns):len(shown)]:  # the lowest panel of each column
            ax.set_xlabel("step t")
            ax.xaxis.set_tick_params(labelbottom=True)
        for ax in axes[:, 0]:
            ax.set_ylabel("value index" if heat_map else "value")
    if heat_map:
        subfigures[-1].colorbar(image, cax=subfigures[-1].add_axes((0.1, 0.15, 0.35, 0.7)),  # its slim column
                                label="value")
    elif width > 1:
        subfigures[0].axes[0].legend(fontsize=6, ncols=min(width, 4))  # on the samples' first panel
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def vectors(samples: np.ndarray, data: np.ndarray | None, path: Path, title: str = "", dims: int = 3,
            sample_classes: np.ndarray | None = None, data_classes: np.ndarray | None = None) -> Path:
    """Vector examples (N, D): a heat map of the samples beside one of as many data rows (same colour scale),
    and below, scatter plots of the first ``dims`` dimensions in pairs, samples over data. Rows sorted by class
    with their classes given, (N,) each, are shown in bands, white lines between them, each band's class beside it."""
    panels = [("samples", samples, sample_classes)] + ([] if data is None else [("test data", data, data_classes)])
    pairs = [(i, j) for i in range(min(dims, samples.shape[1])) for j in range(i + 1, min(dims, samples.shape[1]))]
    low, high = np.percentile(np.concatenate([p.ravel() for _, p, _ in panels]), [1, 99])
    fig = Figure(figsize=(max(6, 3.2 * max(len(pairs), len(panels))), 6.4 if pairs else 3.4), layout="constrained")
    grid = fig.add_gridspec(2 if pairs else 1, max(len(pairs), len(panels)) * 2)
    width = grid.ncols // len(panels)
    for k, (name, values, classes) in enumerate(panels):
        ax = fig.add_subplot(grid[0, k * width:(k + 1) * width])
        shown = ax.imshow(values, aspect="auto", cmap="viridis", vmin=low, vmax=high, interpolation="nearest",
                          extent=(0.5, values.shape[1] + 0.5, len(values) - 0.5, -0.5))  # dimensions 1..D, as x1..xD
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("dimension")
        ax.set_ylabel("example" if classes is None else "class")
        if classes is not None:
            starts = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
            ends = np.r_[starts[1:], len(classes)]
            ax.hlines(starts[1:] - 0.5, 0.5, values.shape[1] + 0.5, colors="white", linewidths=1)
            ax.set_yticks((starts + ends - 1) / 2, [str(c) for c in classes[starts]], fontsize=7)
            ax.tick_params(axis="y", length=0)
    fig.colorbar(shown, ax=fig.axes, shrink=0.8)
    for k, (i, j) in enumerate(pairs):
        ax = fig.add_subplot(grid[1, 2 * k:2 * k + 2])
        if data is not None:
            ax.scatter(data[:, i], data[:, j], s=4, alpha=0.5, label="test data")
        ax.scatter(samples[:, i], samples[:, j], s=4, alpha=0.5, label="samples")
        ax.set_xlabel(f"x{i + 1}")
        ax.set_ylabel(f"x{j + 1}")
        ax.legend(fontsize=6, markerscale=2)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


TSNE_POINTS = 2000  # t-SNE runs on a random subset of the test set: its cost grows faster than linearly


def tsne(codes: np.ndarray, labels: np.ndarray | None, path: Path, seed: int = 0, title: str = "") -> Path:
    """Tutorial Figure 7: scikit-learn's 2-D t-SNE of codes (N, L), e.g. posterior means, coloured by label
    (codes of one or two dimensions are shown as they are, and so are codes that are all one point, a collapsed
    encoder's, on which scikit-learn's t-SNE crashes)."""
    from sklearn.manifold import TSNE  # slow to import; only this figure needs it

    if len(np.unique(codes, axis=0)) < 2:
        embedding, title = np.zeros((len(codes), 2)), f"{title}: every code is the same point (posterior collapse)"
    elif codes.shape[1] <= 2:  # already at most two dimensions: shown as they are (a line of them for one)
        embedding, title = np.pad(codes, ((0, 0), (0, 2 - codes.shape[1]))), title.replace("t-SNE of", "")
    else:
        perplexity = min(30.0, (len(codes) - 1) / 3)  # t-SNE needs perplexity < N
        embedding = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(codes)
    fig, ax = subplots(figsize=(6, 5.5))
    if labels is None:
        ax.scatter(embedding[:, 0], embedding[:, 1], s=3)
    else:
        points = ax.scatter(embedding[:, 0], embedding[:, 1], c=labels, cmap="tab10", s=3)
        ax.legend(*points.legend_elements(), fontsize=7, markerscale=0.8, loc="best", title="label")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def gap_bars(ax, results: dict[str, dict]) -> None:
    """One stacked bar per model: the amortization gap on the approximation gap, and a black line at their sum,
    log p(x) - ELBO[q_phi]; a negative part (within noise) is drawn down from zero, hatched; a model whose
    local E-step is not covered gets its total gap, hatched grey."""
    names = list(results)
    for i, name in enumerate(names):
        r = results[name]
        if "amortization_gap" in r:
            bottom = 0.0
            for key, colour in (("approximation_gap", "tab:blue"), ("amortization_gap", "tab:orange")):
                label = key.replace("_", " ")
                if r[key] >= 0:  # stacked up from where the last one ended
                    ax.bar(i, r[key], bottom=bottom, yerr=r[f"{key}_se"], color=colour, label=label)
                else:  # below zero (noise, or local steps that stopped short): drawn down from zero, hatched
                    ax.bar(i, r[key], yerr=r[f"{key}_se"], color="none", edgecolor=colour, hatch="xx",
                           label=f"{label} (negative)")
                bottom += max(r[key], 0.0)
            ax.plot([i - 0.45, i + 0.45], [r["total_gap"]] * 2, color="k", lw=1.5, label="total gap")
        else:
            ax.bar(i, r["total_gap"], yerr=r["total_gap_se"], color="none", edgecolor="tab:gray", hatch="//",
                   label="total gap (not split)")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("nats per example")
    ax.set_title("log p(x) - ELBO[q_phi]")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)


def gap_comparison(results: dict[str, dict], path: Path) -> Path:
    """The gap decomposition of several models side by side (``gap_bars``)."""
    fig, ax = subplots(figsize=(1.6 + 1.1 * len(results), 3.6))
    gap_bars(ax, results)
    return save(fig, path)


def e_step_diagnostics(result: dict, path: Path) -> Path:
    """``aevb diagnose``'s figure: the gap decomposition, the ELBO against local E-step iterations (with log p(x)
    and ELBO[q_phi] as lines), and KL(q(z_d|x) || p(z_d)) per latent dimension, as far as the result has them."""
    panels = ["gaps"] + ["curve"] * ("e_step_curve" in result) + ["kl"] * ("kl_per_dimension" in result)
    fig, axes = subplots(1, len(panels), figsize=(4.3 * len(panels), 4.4 if "curve" in panels else 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "gaps":
            gap_bars(ax, {result["model"]: result})
        elif panel == "curve":
            curve = result["e_step_curve"]  # NaN at a step where no example's ELBO was finite: a gap in the line
            ax.plot(range(len(curve)), curve, lw=1.2,
                    label=f"ELBO during local E-steps ({result['local_e_step']['samples']}-draw estimates)")
            ax.axhline(result["log_px"], color="k", ls="--", lw=1,
                       label=f"{result.get('evidence', 'log p(x)')} ({result['log_evidence']})")
            ax.axhline(result["elbo_optimal"], color="tab:orange", ls=":", lw=1, label="ELBO[q*]")
            ax.axhline(result["elbo_amortized"], color="tab:gray", ls="-.", lw=1, label="ELBO[q_phi]")
            shown = [v for v in (*curve, result["log_px"], result["elbo_optimal"], result["elbo_amortized"])
                     if np.isfinite(v)]
            low, high = min(shown), max(shown)
            ax.set_ylim(low - 0.05 * (high - low) - 0.01, high + 0.05 * (high - low) + 0.01)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("local E-step")
            ax.set_ylabel("nats per example")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3))  # below: lines cross the whole axes
        else:
            kl = sorted(result["kl_per_dimension"], reverse=True)
            ax.bar(range(len(kl)), kl, color="tab:green")
            ax.set_xlabel("latent dimension (sorted by KL)")
            ax.set_ylabel("E_x KL(q(z_d|x) || p(z_d))")
            ax.set_title(f"{result['active_units']} of {result['latent_dim']} units active")
    fig.suptitle(f"{result['model']}: the E-step on {result['examples']} test examples", fontsize=10)
    fig.tight_layout()
    return save(fig, path)
