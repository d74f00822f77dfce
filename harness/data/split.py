"""The common split, the default protocol: leave-one-out per user (last item = test, second-to-last = validation,
the rest = train).

`split_id` = sha256 of the canonical data fingerprint and the protocol parameters, so it is the same on every
machine and from every path to the same bytes, and differs whenever the data or the protocol differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.data.dataset import Dataset, compute_split_id
from harness.errors import ConfigError

DEFAULT_PROTOCOL: dict[str, Any] = {"name": "leave-one-out", "exclude_history": False}


def resolve_protocol(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    protocol = {**DEFAULT_PROTOCOL, **(overrides or {})}
    if protocol["name"] != "leave-one-out":
        raise ConfigError(f"protocol {protocol['name']!r} is not leave-one-out (see harness.data.protocols)")
    unknown = set(protocol) - set(DEFAULT_PROTOCOL)
    if unknown:
        raise ConfigError(f"unknown protocol parameter(s) {sorted(unknown)}; known: {sorted(DEFAULT_PROTOCOL)}")
    protocol["exclude_history"] = bool(protocol["exclude_history"])  # 0, false and no name one split
    return protocol


@dataclass
class EvalPart:
    """Histories and their held-out targets for one stage (validation or test), for the users evaluated in it."""

    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray


@dataclass
class Split:
    split_id: str
    protocol: dict[str, Any]
    train_sequences: list[np.ndarray]
    valid: EvalPart
    test: EvalPart = field(repr=False)
    counts: dict[str, int] = field(default_factory=dict)


def leave_one_out(dataset: Dataset, protocol: dict[str, Any] | None = None) -> Split:
    """Users with fewer than 3 interactions keep them all for training and are not evaluated."""
    protocol = resolve_protocol(protocol)
    train, valid_users, valid_hist, valid_targets, test_hist, test_targets = [], [], [], [], [], []
    for user, seq in enumerate(dataset.sequences()):
        if len(seq) < 3:
            train.append(seq)
            continue
        train.append(seq[:-2])
        valid_users.append(user)
        valid_hist.append(seq[:-2])
        valid_targets.append(seq[-2])
        test_hist.append(seq[:-1])
        test_targets.append(seq[-1])
    users = np.array(valid_users, dtype=np.int64)
    return Split(
        split_id=compute_split_id(dataset, protocol),
        protocol=protocol,
        train_sequences=train,
        valid=EvalPart(users, valid_hist, np.array(valid_targets, dtype=np.int64)),
        test=EvalPart(users.copy(), test_hist, np.array(test_targets, dtype=np.int64)),
        counts={"train_interactions": int(sum(len(s) for s in train)), "evaluated_users": len(users)},
    )
