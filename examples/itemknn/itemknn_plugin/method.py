"""itemknn: item-based k-nearest-neighbour collaborative filtering, a method plugin for gr-harness.

Sarwar et al. (WWW 2001) and Deshpande & Karypis (TOIS 2004): two items are similar when the same users interacted
with both (cosine over the user-item matrix, shrunk towards 0 when few users support it, as in Dacrema et al.'s
RecSys 2019 baselines); only each item's `neighbors` most similar items are kept. A user's scores sum the
similarities of their last `history` items, the more recent ones weighted more (`decay`), since the evaluation
asks for the next item of a sequence.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from harness.api import Budget, Method, TrainView


class Itemknn(Method):
    name = "itemknn"
    paper = "Sarwar et al., Item-Based Collaborative Filtering Recommendation Algorithms, WWW 2001"
    needs = ()

    def fit(self, train: TrainView, budget: Budget) -> None:
        n = train.n_items
        users = np.concatenate([np.full(len(s), u) for u, s in enumerate(train.sequences)]).astype(np.int64)
        items = np.concatenate(train.sequences).astype(np.int64)
        seen = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (users, items)), shape=(len(train.sequences), n))
        seen.data[:] = 1.0  # repeats count once
        co = (seen.T @ seen).tocoo()
        support = np.asarray(seen.sum(axis=0)).ravel()
        off_diagonal = co.row != co.col
        row, col, both = co.row[off_diagonal], co.col[off_diagonal], co.data[off_diagonal]
        cosine = both / (np.sqrt(support[row] * support[col]) + self.config["shrink"])
        self.sim = self._top_neighbours(sp.csr_matrix((cosine, (row, col)), shape=(n, n)), budget)
        popularity = support / max(1.0, support.max())
        self.tiebreak = torch.from_numpy(1e-6 * popularity.astype(np.float32))  # unseen pairs: popular first
        budget.epoch_done()

    def _top_neighbours(self, sim: sp.csr_matrix, budget: Budget) -> sp.csr_matrix:
        """Keep each row's `neighbors` largest entries (rows left when the budget runs out keep them all)."""
        k = int(self.config["neighbors"])
        rows, cols, vals = [], [], []
        for i in range(sim.shape[0]):
            if i % 1024 == 0 and budget.exhausted():
                rest = sim[i:].tocoo()
                rows.append(rest.row + i), cols.append(rest.col), vals.append(rest.data)
                break
            start, end = sim.indptr[i], sim.indptr[i + 1]
            values, columns = sim.data[start:end], sim.indices[start:end]
            if len(values) > k:
                keep = np.argpartition(-values, k - 1)[:k]
                values, columns = values[keep], columns[keep]
            rows.append(np.full(len(values), i)), cols.append(columns), vals.append(values)
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=sim.shape)

    def score(self, histories: list[np.ndarray], items: torch.Tensor | None = None) -> torch.Tensor:
        length, decay = int(self.config["history"]), float(self.config["decay"])
        rows, cols, weights = [], [], []
        for b, hist in enumerate(histories):
            recent = np.asarray(hist[-length:], dtype=np.int64)
            rows.append(np.full(len(recent), b)), cols.append(recent)
            weights.append(decay ** np.arange(len(recent))[::-1])  # the last item weighs 1
        votes = sp.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(len(histories), self.sim.shape[0]))  # repeated items add up
        scores = torch.from_numpy((votes @ self.sim).toarray().astype(np.float32)) + self.tiebreak
        return scores if items is None else scores[:, items]
