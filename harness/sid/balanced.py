"""The balanced k-means tree (`balanced`): DIG's zero-collision start, whose per-parent means are its codebooks."""
from __future__ import annotations

import numpy as np

from harness.sid.tokenizers import SIDCodes, Tokenizer, balanced_assign, kmeans, tokenizer


@tokenizer("balanced")
class BalancedKMeans(Tokenizer):
    """A tree: each parent's items split into equal-size clusters, numbered within the parent, until every leaf holds
    one item. The branching of a group of n items with r levels still to fill is min(W, ⌈n^(1/r)⌉), so every level
    carries information (a catalogue of W^L items or more splits W ways at every level). A split is then refined by
    Lloyd steps to a fixed point, with more branches where the fixed point would crowd more items into a cluster than
    its subtree can keep apart: each item ends nearest its own cluster's mean, so an argmin over the tree's
    per-parent means returns the same codes (DIG's re-assignment)."""

    revision = 1  # revision 1: spread over every level, Lloyd-refined splits (revision 0 filled the top levels first)

    def __init__(self, levels=3, width=256, seed=0, headroom: int = 4):
        super().__init__(levels, width, seed, headroom=headroom)

    def _cap(self, remaining: int, balanced_size: int) -> int:
        """The most items a cluster may take with `remaining` levels left, this one included: what its subtree can
        keep apart (W^(r-1)), less headroom above the leaf level, since each split below crowds its clusters too;
        never below the equal-size share (a catalogue larger than W^L must collide somewhere)."""
        room = self.width ** (remaining - 1)
        return max(balanced_size, room // self.options["headroom"] if remaining > 2 else room)

    def fit(self, x):
        x = x.astype(np.float32)
        codes = np.zeros((len(x), self.levels), dtype=np.int64)
        recon = np.zeros_like(x)

        def split(members: np.ndarray, level: int) -> None:
            if level == self.levels or len(members) == 0:
                return
            residual = x[members] - recon[members]
            remaining = self.levels - level
            if len(members) <= self.width and remaining == 1:  # a leaf each
                labels, centers = np.arange(len(members)), residual
            else:
                k = min(self.width, int(np.ceil(len(members) ** (1 / remaining) - 1e-9)), len(members))
                cap = self._cap(remaining, -(-len(members) // k))
                labels, centers = _balanced_split(residual, k, self.seed + level, cap, self.width)
            codes[members, level] = labels
            recon[members] += centers[labels]
            for c in np.unique(labels):
                split(members[labels == c], level + 1)

        split(np.arange(len(x)), 0)
        error = float(((x - recon) ** 2).sum(axis=1).mean())
        return SIDCodes(codes, [self.width] * self.levels, [], error)


def _cluster_means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x)
    return (sums / np.maximum(np.bincount(labels, minlength=k), 1)[:, None]).astype(np.float32)


def _lloyd(x: np.ndarray, labels: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Lloyd steps from `labels` to a fixed point (each item nearest its own cluster's mean); labels renumbered over
    the clusters that keep items. Returns labels, means, and whether the fixed point was reached."""
    for _ in range(steps + 1):
        labels = np.unique(labels, return_inverse=True)[1].reshape(-1)
        centers = _cluster_means(x, labels, int(labels.max()) + 1)
        dist = (x ** 2).sum(1)[:, None] - 2 * x @ centers.T + (centers ** 2).sum(1)[None, :]
        nearest = dist.argmin(1)
        if np.array_equal(nearest, labels):
            return labels, centers, True
        labels = nearest
    return labels, _cluster_means(x, labels, int(labels.max()) + 1), False


def _balanced_split(x: np.ndarray, k: int, seed: int, cap: int, width: int, lloyd_steps: int = 100):
    """Equal-size clusters (k-means centres, capacity-constrained assignment), then Lloyd steps to a fixed point
    (every item nearest its own cluster's mean). A cluster the fixed point crowds beyond `cap` items (a tight blob
    beside outliers draws one centre) is cut into equal-size pieces, and Lloyd runs again, up to `width` clusters;
    failing that, Lloyd steps under the cap. Labels are numbered 0.. over the clusters that keep items."""
    if k <= 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(0, keepdims=True)
    _, centers = kmeans(x, k, seed)
    balanced = balanced_assign(x, centers, capacity=-(-len(x) // len(centers)))
    labels, centers, fixed = _lloyd(x, balanced, lloyd_steps)
    while fixed:
        sizes = np.bincount(labels)
        if sizes.max() <= cap:
            return labels, centers
        if len(sizes) >= width:
            break
        crowded = np.flatnonzero(labels == sizes.argmax())
        pieces = min(width - len(sizes) + 1, 2 * -(-sizes.max() // cap))
        _, sub_centres = kmeans(x[crowded], pieces, seed)  # equal-size pieces, so that the tight core is cut too
        sub = balanced_assign(x[crowded], sub_centres, capacity=-(-len(crowded) // len(sub_centres)))
        labels = labels.copy()
        labels[crowded] = np.where(sub == 0, labels[crowded], len(sizes) + sub - 1)
        labels, centers, fixed = _lloyd(x, labels, lloyd_steps)
    # no fixed point keeps within the cap: capacity-constrained Lloyd from the last centres, so that only items
    # their nearest cluster has no room for sit elsewhere
    for _ in range(lloyd_steps):
        moved = balanced_assign(x, centers, cap)
        if np.array_equal(moved, labels):
            break
        labels = np.unique(moved, return_inverse=True)[1].reshape(-1)
        centers = _cluster_means(x, labels, int(labels.max()) + 1)
    return labels, centers
