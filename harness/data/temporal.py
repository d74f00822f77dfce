"""The global temporal split (`--protocol temporal`): one cut-off time for everyone, training strictly before it.

Interactions are ordered by time; the last `test_fraction` of them (by timestamp) form the test window, the
`valid_fraction` before it the validation window, everything earlier is training. A user is evaluated on a window
when they have history before it and an interaction in it: the target is their first interaction in the window,
the history everything they did before the window began. No model sees anything after the window's start, which
per-user leave-one-out cannot promise (a MovieLens user's last rating may be years before another user's first).
Only datasets with real timestamps qualify.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from harness.data.dataset import Dataset, compute_split_id
from harness.data.split import EvalPart, Split
from harness.errors import ConfigError

TEMPORAL_DEFAULTS: dict[str, Any] = {"name": "temporal", "valid_fraction": 0.1, "test_fraction": 0.1,
                                     "exclude_history": False}


def resolve_temporal(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    protocol = {**TEMPORAL_DEFAULTS, **(overrides or {})}
    unknown = set(protocol) - set(TEMPORAL_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown temporal-protocol parameter(s) {sorted(unknown)}; known: {sorted(TEMPORAL_DEFAULTS)}")
    for key in ("valid_fraction", "test_fraction"):
        protocol[key] = float(protocol[key])
        if not 0.0 < protocol[key] < 0.5:
            raise ConfigError(f"temporal protocol: {key} must lie in (0, 0.5), got {protocol[key]}")
    protocol["exclude_history"] = bool(protocol["exclude_history"])
    return protocol


def _window(frame, users_before, start: float, end: float | None) -> EvalPart:
    """Each user with history before `start` and an interaction in [start, end): history before start, target =
    the first interaction in the window."""
    in_window = frame[(frame["ts"] >= start) & ((frame["ts"] < end) if end is not None else True)]
    first = in_window.groupby("user", sort=True).head(1)
    users, histories, targets = [], [], []
    for user, item in zip(first["user"].to_numpy(), first["item"].to_numpy()):
        history = users_before.get(int(user))
        if history is not None and len(history):
            users.append(int(user))
            histories.append(history)
            targets.append(int(item))
    return EvalPart(np.array(users, dtype=np.int64), histories, np.array(targets, dtype=np.int64))


def temporal_split(dataset: Dataset, protocol: dict[str, Any] | None = None) -> Split:
    protocol = resolve_temporal(protocol)
    if not dataset.timed:
        raise ConfigError(f"dataset {dataset.name!r} has no timestamps (its order is a position in each user's "
                          f"sequence): the temporal protocol needs real times, e.g. ml-100k or ml-latest-small")
    frame = dataset.interactions  # sorted by (user, ts)
    ts = np.sort(frame["ts"].to_numpy())
    t_test = float(ts[int(len(ts) * (1 - protocol["test_fraction"]))])
    t_valid = float(ts[int(len(ts) * (1 - protocol["test_fraction"] - protocol["valid_fraction"]))])

    def before(cut: float) -> dict[int, np.ndarray]:
        rows = frame[frame["ts"] < cut]
        return {int(u): g.to_numpy(np.int64) for u, g in rows.groupby("user", sort=True)["item"]}

    train = before(t_valid)
    train_sequences = [train.get(u, np.zeros(0, dtype=np.int64)) for u in range(dataset.n_users)]
    valid = _window(frame, train, t_valid, t_test)
    test = _window(frame, before(t_test), t_test, None)
    protocol = {**protocol, "valid_start": t_valid, "test_start": t_test}
    return Split(split_id=compute_split_id(dataset, protocol), protocol=protocol, train_sequences=train_sequences,
                 valid=valid, test=test,
                 counts={"train_interactions": int(sum(len(s) for s in train_sequences)),
                         "evaluated_users": len(test.users), "validation_users": len(valid.users)})
