"""The leakage guard: the only way interaction-derived signals reach a tokenizer or an embedder.

`TrainInteractions` is made from a split's training part and from nothing else; functions that learn from
interactions accept nothing else, so test or validation targets cannot be passed in. A plugin receives it through
`TrainView.interactions()`, built by the referee from the same split.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from harness.data.labelled import LabelledSplit
from harness.data.split import Split


class TrainInteractions:
    __slots__ = ("sequences", "n_items")

    def __init__(self, *_: Any, **__: Any):
        raise TypeError("TrainInteractions is built with TrainInteractions.from_split(split, n_items) (a plugin gets "
                        "it from train.interactions()): raw sequences are refused so that held-out targets cannot "
                        "leak in")

    @classmethod
    def from_split(cls, split: Split | LabelledSplit, n_items: int) -> "TrainInteractions":
        if not isinstance(split, (Split, LabelledSplit)):
            raise TypeError(f"expected a Split, got {type(split).__name__}")
        obj = object.__new__(cls)
        object.__setattr__(obj, "sequences", [np.asarray(s, dtype=np.int64).copy() for s in split.train_sequences])
        object.__setattr__(obj, "n_items", int(n_items))
        return obj

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
