"""The labelled-exposure protocol: every rating is an exposure, label = rating ≥ threshold.

Chronological per user: the last `test_exposures` exposures are the test block, the `valid_exposures` before them the
validation block, everything earlier is training. A block is judged two ways: ranking AUC over its exposures (real
positives against real negatives) and full-catalogue retrieval with its positives as targets. What a method may know
when a block is judged is everything before the block (its history), never a label inside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.data.dataset import Dataset, compute_split_id
from harness.errors import ConfigError, DataError

LABELLED_DEFAULTS: dict[str, Any] = {
    "name": "labelled", "threshold": 4.0, "valid_exposures": 5, "test_exposures": 10, "min_train_exposures": 5,
    # as in leave-one-out (TIGER/GRID): nothing is removed from a method's list; an item the user was already shown
    # is never a target here, so recommending it costs every method alike. True removes earlier exposures.
    "exclude_history": False,
    # "exposures": real labelled exposures only (needs ratings). "sampled": every interaction is a positive and
    # gets `sampled_per_positive` items the user never interacted with, labelled 0 and flagged `sampled`: they are
    # scored for AUC but never presented as exposures (not in histories, not counted by cross features).
    "negatives": "exposures", "sampled_per_positive": 1, "sample_seed": 0,
}


def resolve_labelled(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    protocol = {**LABELLED_DEFAULTS, **(overrides or {})}
    unknown = set(protocol) - set(LABELLED_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown labelled-protocol parameter(s) {sorted(unknown)}; known: {sorted(LABELLED_DEFAULTS)}")
    for key in ("valid_exposures", "test_exposures", "min_train_exposures"):
        if int(protocol[key]) < (1 if key != "min_train_exposures" else 0):
            raise ConfigError(f"labelled protocol: {key} must be a positive count, got {protocol[key]!r}")
        protocol[key] = int(protocol[key])
    protocol["threshold"] = float(protocol["threshold"])
    protocol["exclude_history"] = bool(protocol["exclude_history"])
    if protocol["negatives"] not in ("exposures", "sampled"):
        raise ConfigError(f"labelled protocol: negatives must be 'exposures' or 'sampled', got {protocol['negatives']!r}")
    protocol["sampled_per_positive"] = int(protocol["sampled_per_positive"])
    protocol["sample_seed"] = int(protocol["sample_seed"])
    return protocol


@dataclass
class ExposureHistory:
    """One user's exposures before an evaluated block (chronological): what a labelled-aware method may use."""

    items: np.ndarray
    ts: np.ndarray
    ratings: np.ndarray
    labels: np.ndarray

    def positives(self) -> np.ndarray:
        return self.items[self.labels == 1]


def _exposures_only(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[~frame["sampled"]] if "sampled" in frame else frame


@dataclass
class LabelledPart:
    """One evaluated block (validation or test) for the users evaluated in it."""

    users: np.ndarray
    histories: list[np.ndarray]        # positives before the block: what a sequence model sees
    exposures: list[ExposureHistory]   # every labelled exposure before the block
    block_items: list[np.ndarray]      # the block's exposed items ...
    block_labels: list[np.ndarray]     # ... and their labels (0/1)
    known: pd.DataFrame = field(repr=False)  # all rows before the block (every user; sampled ones flagged)

    @property
    def targets(self) -> list[np.ndarray]:
        """The block's positives: the retrieval targets."""
        return [items[labels == 1] for items, labels in zip(self.block_items, self.block_labels)]

    def exclude(self) -> list[np.ndarray]:
        return [h.items for h in self.exposures]


@dataclass
class LabelledSplit:
    split_id: str
    protocol: dict[str, Any]
    train_sequences: list[np.ndarray]  # each user's positive training exposures, chronological
    train_exposures: pd.DataFrame      # user, item, ts, rating, label (training part only)
    valid: LabelledPart
    test: LabelledPart = field(repr=False)
    counts: dict[str, int] = field(default_factory=dict)


def labelled_frame(dataset: Dataset, protocol: dict[str, Any]) -> pd.DataFrame:
    if dataset.has_labels:
        frame = dataset.interactions[["user", "item", "ts", "rating"]].copy()
        frame["label"] = (frame["rating"] >= protocol["threshold"]).astype(np.int64)
    elif protocol["negatives"] == "sampled":
        frame = dataset.interactions[["user", "item", "ts"]].copy()
        frame["rating"], frame["label"] = np.nan, 1
    else:
        raise DataError(f"dataset {dataset.name!r} has no ratings, so it has no labelled exposures: the labelled "
                        f"protocol needs a card with a rating column (ml-100k, ml-latest-small, synthetic-labelled), "
                        f"or sampled negatives (--protocol-set negatives=sampled), which the record then states")
    frame["sampled"] = False
    frame["position"] = frame.groupby("user").cumcount()
    return frame


def sample_negatives(frame: pd.DataFrame, n_items: int, per_positive: int, seed: int) -> pd.DataFrame:
    """For each positive row, `per_positive` items its user never interacted with, at the positive's time and in
    its block, labelled 0 and flagged `sampled`."""
    rng = np.random.default_rng(seed)
    seen = frame.groupby("user")["item"].apply(lambda s: set(s.tolist()))
    positives = frame[frame["label"] == 1]
    rows = []
    for user, group in positives.groupby("user", sort=True):
        taken = seen[user]
        if len(taken) >= n_items:
            continue
        need = len(group) * per_positive
        draws = []
        while len(draws) < need:  # rejection sampling: the catalogue is much larger than any user's history
            candidates = rng.integers(0, n_items, size=2 * need + 8)
            draws.extend(int(c) for c in candidates if c not in taken)
        out = group.loc[group.index.repeat(per_positive)].copy()
        out["item"] = np.asarray(draws[:need], dtype=np.int64)
        rows.append(out)
    if not rows:
        return frame.iloc[:0]
    sampled = pd.concat(rows)
    sampled["rating"], sampled["label"], sampled["sampled"] = np.nan, 0, True
    return sampled


def _part(block: pd.DataFrame, known: pd.DataFrame, users: np.ndarray) -> LabelledPart:
    known_by_user = {u: g for u, g in _exposures_only(known).groupby("user", sort=False)}
    block_by_user = {u: g for u, g in block.groupby("user", sort=False)}
    empty = known.iloc[:0]
    exposures, histories, items, labels = [], [], [], []
    for user in users:
        past = known_by_user.get(user, empty)
        history = ExposureHistory(past["item"].to_numpy(np.int64), past["ts"].to_numpy(np.int64),
                                  past["rating"].to_numpy(np.float64), past["label"].to_numpy(np.int64))
        exposures.append(history)
        histories.append(history.positives())
        rows = block_by_user[user]
        items.append(rows["item"].to_numpy(np.int64))
        labels.append(rows["label"].to_numpy(np.int64))
    return LabelledPart(users, histories, exposures, items, labels, known.reset_index(drop=True))


def labelled_split(dataset: Dataset, protocol: dict[str, Any] | None = None) -> LabelledSplit:
    """Users with fewer than valid + test + min_train exposures keep them all for training and are not evaluated."""
    card_threshold = (dataset.meta.get("labels") or {}).get("threshold")  # the card's `labels:` section
    protocol = resolve_labelled({**({"threshold": card_threshold} if card_threshold is not None else {}),
                                 **(protocol or {})})
    frame = labelled_frame(dataset, protocol)
    n_valid, n_test = protocol["valid_exposures"], protocol["test_exposures"]
    lengths = frame.groupby("user")["item"].transform("size")
    evaluated = lengths >= n_valid + n_test + protocol["min_train_exposures"]
    from_end = lengths - frame["position"]  # 1 = the user's last exposure
    is_test = evaluated & (from_end <= n_test)
    is_valid = evaluated & (from_end > n_test) & (from_end <= n_test + n_valid)
    frame["block"] = np.where(is_test, "test", np.where(is_valid, "valid", "train"))
    if protocol["negatives"] == "sampled":
        frame = pd.concat([frame, sample_negatives(frame, dataset.n_items, protocol["sampled_per_positive"],
                                                   protocol["sample_seed"])])
        frame = frame.sort_values(["user", "ts", "sampled"], kind="stable").reset_index(drop=True)
    train = frame[frame["block"] == "train"]
    valid_block, test_block = frame[frame["block"] == "valid"], frame[frame["block"] == "test"]
    users = np.unique(frame.loc[frame["block"] != "train", "user"].to_numpy(np.int64))
    positives = train[(train["label"] == 1) & ~train["sampled"]]
    bounds = positives.groupby("user")["item"].apply(lambda s: s.to_numpy(np.int64))
    train_sequences = [bounds.get(u, np.zeros(0, dtype=np.int64)) for u in range(dataset.n_users)]
    columns = ["user", "item", "ts", "rating", "label", "sampled"]
    train = train[columns].reset_index(drop=True)
    before_test = frame[frame["block"] != "test"][columns].reset_index(drop=True)
    return LabelledSplit(
        split_id=compute_split_id(dataset, protocol),
        protocol=protocol,
        train_sequences=train_sequences,
        train_exposures=train,
        valid=_part(valid_block, train, users),
        test=_part(test_block, before_test, users),
        counts={"train_exposures": int((~train["sampled"]).sum()), "train_positives": len(positives),
                "evaluated_users": len(users), "test_exposures": len(test_block),
                "test_positives": int(test_block["label"].sum()), "sampled_negatives": int(frame["sampled"].sum())},
    )
