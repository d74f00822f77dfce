"""The split protocols: the one table from a protocol's name to the function that splits a dataset under it.

A protocol is a dict with a `name` and its parameters; each split function checks its own parameters and records the
resolved dict (and so the `split_id`). Whatever depends on which protocol a split follows asks `is_labelled`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from harness.data.dataset import Dataset
from harness.data.labelled import LabelledSplit, labelled_split
from harness.data.split import DEFAULT_PROTOCOL, Split, leave_one_out
from harness.data.temporal import temporal_split
from harness.errors import ConfigError, DataError

LABELLED = "labelled"
PROTOCOLS: dict[str, Callable[[Dataset, dict[str, Any]], Split | LabelledSplit]] = {
    "leave-one-out": leave_one_out,  # last item = test, second-to-last = validation (TIGER / P5 / GRID)
    LABELLED: labelled_split,        # rated exposures, label = rating >= threshold; AUC beside retrieval
    "temporal": temporal_split,      # one global cut-off time, training strictly before it
}


def protocol_name(protocol: dict[str, Any] | None) -> str:
    return (protocol or {}).get("name", DEFAULT_PROTOCOL["name"])


def is_labelled(protocol: dict[str, Any] | None) -> bool:
    """Whether a protocol (or a split's recorded protocol) is the labelled-exposure protocol."""
    return protocol_name(protocol) == LABELLED


def resolve(card_protocol: dict[str, Any], asked: dict[str, Any]) -> dict[str, Any]:
    """The protocol a run uses: the card's defaults under what was asked, unless another protocol was asked, whose
    own defaults then apply."""
    if asked.get("name", card_protocol.get("name")) != card_protocol.get("name"):
        return dict(asked)
    return {**card_protocol, **asked}


def cold_targets(split: Split | LabelledSplit) -> dict[str, float]:
    """How many test targets never occur in training (no method can have learnt them from interactions)."""
    seen = np.zeros(0, dtype=np.int64)
    if split.train_sequences:
        seen = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s in split.train_sequences]))
    targets = split.test.targets
    flat = np.concatenate([np.atleast_1d(t) for t in targets]) if len(targets) else np.zeros(0, dtype=np.int64)
    cold = int((~np.isin(flat, seen)).sum())
    return {"cold_targets": cold, "cold_target_share": round(cold / len(flat), 6) if len(flat) else 0.0}


def make_split(dataset: Dataset, protocol: dict[str, Any] | None = None) -> Split | LabelledSplit:
    name = protocol_name(protocol)
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; available: {', '.join(PROTOCOLS)}")
    split = PROTOCOLS[name](dataset, dict(protocol or {}))
    if not len(split.test.users):
        lengths = dataset.interactions.groupby("user").size() if dataset.n_interactions else []
        raise DataError(f"dataset {dataset.name!r}: none of its {dataset.n_users} users can be evaluated under the "
                        f"{name} protocol (longest history {int(max(lengths, default=0))} interactions"
                        + ("; leave-one-out needs at least 3" if name == "leave-one-out" else "") + ")")
    return split
