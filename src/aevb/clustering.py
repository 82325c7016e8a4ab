"""Scoring a clustering against reference labels: Hungarian-matched accuracy, majority-label accuracy, NMI,
cluster proportions; and merging a mixture's components into fewer clusters, without labels.

Cluster indices are arbitrary, so accuracy first finds the one-to-one matching of clusters to labels
that maximizes the number of agreements (the assignment problem, solved by scipy's
``linear_sum_assignment``), then counts the agreements. With more clusters than labels, unmatched
clusters count as errors. The majority-label accuracy is many-to-one instead: each cluster is read as its
most frequent label, several clusters may share one, and it can only grow with the number of clusters.
``merge_components`` groups the components of a mixture with more components than wanted clusters (without
labels), so that the one-to-one accuracy of the groups can be scored.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import SpectralClustering
from sklearn.metrics import normalized_mutual_info_score


def contingency(clusters: ArrayLike, labels: ArrayLike, num_clusters: int, num_labels: int) -> np.ndarray:
    """counts[c, k] = number of examples in cluster c with label k, shape (num_clusters, num_labels)."""
    counts = np.zeros((num_clusters, num_labels), dtype=np.int64)
    np.add.at(counts, (np.asarray(clusters), np.asarray(labels)), 1)
    return counts


def match_clusters(clusters: ArrayLike, labels: ArrayLike, num_clusters: int, num_labels: int) -> np.ndarray:
    """The label each cluster is matched to (-1: unmatched), by the accuracy-maximizing one-to-one matching."""
    rows, cols = linear_sum_assignment(contingency(clusters, labels, num_clusters, num_labels), maximize=True)
    matched = np.full(num_clusters, -1)
    matched[rows] = cols
    return matched


def cluster_accuracy(clusters: ArrayLike, labels: ArrayLike, num_clusters: int, num_labels: int) -> float:
    """Fraction of examples whose cluster is matched to their label, under the best one-to-one matching."""
    matched = match_clusters(clusters, labels, num_clusters, num_labels)
    return float(np.mean(matched[np.asarray(clusters)] == np.asarray(labels)))


def majority_accuracy(clusters: ArrayLike, labels: ArrayLike, num_clusters: int, num_labels: int) -> float:
    """Fraction of examples whose label is the most frequent label of their cluster (many-to-one), the accuracy
    of Rui Shu's GMVAE runs; at least ``cluster_accuracy``."""
    counts = contingency(clusters, labels, num_clusters, num_labels)
    return float(counts.max(1).sum() / counts.sum())


def nmi(clusters: ArrayLike, labels: ArrayLike) -> float:
    """Normalized mutual information between clusters and labels (arithmetic normalization), in [0, 1]."""
    return float(normalized_mutual_info_score(labels, clusters))


def cluster_proportions(clusters: ArrayLike, num_clusters: int) -> np.ndarray:
    """Fraction of the examples in each cluster, shape (num_clusters,)."""
    return np.bincount(np.asarray(clusters), minlength=num_clusters) / len(clusters)


def order_by_label(matched: np.ndarray) -> np.ndarray:
    """Cluster indices sorted by their matched label, unmatched clusters (-1) last."""
    return np.lexsort((matched, matched < 0))


def merge_components(probs: ArrayLike, num_groups: int, seed: int = 0) -> np.ndarray:
    """The group, in {0, ..., num_groups - 1}, of each of the C components of a mixture, from posterior cluster
    probabilities ``probs`` = q(y | x_i) of shape (N, C), without labels; shape (C,).

    Two components are alike when the same examples give both weight: the affinity of components a and b is the
    cosine of their columns, A_ab = sum_i q(a|x_i) q(b|x_i) / (||q(a|.)|| ||q(b|.)||), and the components are
    split into ``num_groups`` by spectral clustering of A (scikit-learn's ``SpectralClustering``, seeded). An
    example's group is then argmax_g sum_{y in g} q(y|x) (``merged_clusters``). Components no example gives
    weight to join group 0 (they add nothing to any group's sum); with at most ``num_groups`` components that have
    weight, each is a group of its own.
    """
    probs = np.asarray(probs, dtype=np.float64)
    norms = np.linalg.norm(probs, axis=0)
    live = np.flatnonzero(norms > 0)
    groups = np.zeros(probs.shape[1], dtype=np.int64)
    if len(live) <= num_groups:
        groups[live] = np.arange(len(live))
        return groups
    columns = probs[:, live] / norms[live]
    affinity = columns.T @ columns  # (C', C'), ones on the diagonal
    groups[live] = SpectralClustering(num_groups, affinity="precomputed", random_state=seed).fit_predict(affinity)
    return groups


def merged_clusters(probs: ArrayLike, groups: np.ndarray) -> np.ndarray:
    """argmax_g sum_{y in g} q(y | x) of each example, for ``probs`` (N, C) and ``groups`` (C,); shape (N,)."""
    membership = np.eye(groups.max() + 1)[groups]  # (C, G), one-hot rows
    return (np.asarray(probs) @ membership).argmax(1)
