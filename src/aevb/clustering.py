"""Scoring a clustering against reference labels: Hungarian-matched accuracy, majority-label accuracy, NMI,
cluster proportions.

Cluster indices are arbitrary, so accuracy first finds the one-to-one matching of clusters to labels
that maximizes the number of agreements (the assignment problem, solved by scipy's
``linear_sum_assignment``), then counts the agreements. With more clusters than labels, unmatched
clusters count as errors. The majority-label accuracy is many-to-one instead: each cluster is read as its
most frequent label, several clusters may share one, and it can only grow with the number of clusters.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
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
