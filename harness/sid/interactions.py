"""The leakage guard: the only way interaction-derived signals reach a tokenizer or an embedder.

`TrainInteractions` can be made from a `TrainView` (what a plugin gets) or from a `Split` (its training part);
functions that learn from interactions accept nothing else, so test or validation targets cannot be passed in.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class TrainInteractions:
    __slots__ = ("sequences", "n_items")

    def __init__(self, *_: Any, **__: Any):
        raise TypeError("TrainInteractions is built with TrainInteractions.from_view(train_view) or "
                        ".from_split(split): raw sequences are refused so that held-out targets cannot leak in")

    @classmethod
    def _make(cls, sequences: list[np.ndarray], n_items: int) -> "TrainInteractions":
        obj = object.__new__(cls)
        object.__setattr__(obj, "sequences", [np.asarray(s, dtype=np.int64).copy() for s in sequences])
        object.__setattr__(obj, "n_items", int(n_items))
        return obj

    @classmethod
    def from_view(cls, view) -> "TrainInteractions":
        from harness.api import TrainView
        if not isinstance(view, TrainView):
            raise TypeError(f"expected a TrainView, got {type(view).__name__}")
        return cls._make(view.sequences, view.n_items)

    @classmethod
    def from_split(cls, split, n_items: int) -> "TrainInteractions":
        from harness.data.split import Split
        if not isinstance(split, Split):
            raise TypeError(f"expected a Split, got {type(split).__name__}")
        return cls._make(split.train_sequences, n_items)

    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """Consecutive (previous, next) item pairs of the training sequences."""
        prev = [s[:-1] for s in self.sequences if len(s) > 1]
        nxt = [s[1:] for s in self.sequences if len(s) > 1]
        if not prev:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(prev), np.concatenate(nxt)


def require_train(interactions: Any) -> TrainInteractions:
    if not isinstance(interactions, TrainInteractions):
        raise TypeError(f"interaction-derived inputs must be TrainInteractions (training split only), got "
                        f"{type(interactions).__name__}")
    return interactions
