"""Canonical tables every loader produces: interactions (user, item, ts[, rating]), items (id, text, attrs) and,
where the source has them, users (id, categorical features)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.errors import HarnessError


@dataclass
class Dataset:
    """Users and items are dense indices (0..n-1); raw ids are kept in `user_ids` and `items.item_id`.

    `interactions` is sorted by (user, ts) with ties kept in file order, so each user's rows are their sequence.
    `ts` is a unix time where the source has one, else the position in the user's sequence.
    `users`, where present, has one row per dense user: `user_id` (raw id), then categorical features
    (small ints or strings). It is not part of the fingerprint: user features do not change a split.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    user_ids: np.ndarray
    text_fields: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    users: pd.DataFrame | None = None

    @property
    def timed(self) -> bool:
        """True when `ts` are real times, comparable across users (False: a position in each user's sequence)."""
        return self.meta.get("ts") != "position"

    @property
    def has_labels(self) -> bool:
        """True when every interaction is a labelled exposure (a `rating` column is present)."""
        return "rating" in self.interactions

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_interactions(self) -> int:
        return len(self.interactions)

    def sequences(self) -> list[np.ndarray]:
        users = self.interactions["user"].to_numpy()
        items = self.interactions["item"].to_numpy()
        bounds = np.searchsorted(users, np.arange(self.n_users + 1))
        return [items[bounds[u]:bounds[u + 1]].astype(np.int64) for u in range(self.n_users)]

    def fingerprint(self) -> str:
        """sha256 of the canonical content (never of file paths): equal data from anywhere gives an equal hash."""
        digest = hashlib.sha256()
        digest.update(f"users={self.n_users};items={self.n_items};".encode())
        for column in ("user", "item", "ts", "rating"):
            if column in self.interactions:
                values = self.interactions[column].to_numpy()
                dtype = "<f8" if column == "rating" else "<i8"
                digest.update(column.encode())
                digest.update(np.ascontiguousarray(values, dtype=dtype).tobytes())
        return digest.hexdigest()

    def stats(self) -> dict[str, Any]:
        lengths = np.bincount(self.interactions["user"].to_numpy(), minlength=self.n_users)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "mean_seq_len": float(lengths.mean()) if len(lengths) else 0.0,
            "min_seq_len": int(lengths.min()) if len(lengths) else 0,
        }


def build_dataset(name: str, users: np.ndarray, items: np.ndarray, ts: np.ndarray, item_table: pd.DataFrame,
                  ratings: np.ndarray | None = None, user_ids: np.ndarray | None = None,
                  text_fields: list[str] | None = None, meta: dict[str, Any] | None = None,
                  user_table: pd.DataFrame | None = None) -> Dataset:
    """Canonicalise raw arrays: users/items must already be dense indices (item i = row i of `item_table`, whose
    `item_id` is the raw id); rows sorted stably by (user, ts).

    Items are then renumbered by `canonical_order`, so that an item's index says nothing about the file it came
    from (`source_index` keeps its position there). `user_table` (column `user_id` = raw id, then features) is
    reordered so that row u describes dense user u; rows of users without interactions are dropped, and a user
    missing from it is an error.
    """
    items = np.asarray(items, dtype=np.int64)
    if len(items) and (items.min() < 0 or items.max() >= len(item_table)):
        bad = int(items[(items < 0) | (items >= len(item_table))][0])
        raise ValueError(f"item index {bad} outside the item table's {len(item_table)} rows")
    order = canonical_order(item_table["item_id"].astype(str).to_numpy())
    new_index = np.empty(len(order), dtype=np.int64)
    new_index[order] = np.arange(len(order))
    item_table = item_table.assign(source_index=np.arange(len(item_table))).iloc[order]
    frame = pd.DataFrame({"user": np.asarray(users, dtype=np.int64),
                          "item": new_index[np.asarray(items, dtype=np.int64)],
                          "ts": np.asarray(ts, dtype=np.int64)})
    if ratings is not None:
        frame["rating"] = np.asarray(ratings, dtype=np.float64)
    frame = frame.sort_values(["user", "ts"], kind="stable").reset_index(drop=True)
    n_users = int(frame["user"].max()) + 1 if len(frame) else 0
    if user_ids is None:
        user_ids = np.arange(n_users).astype(str)
    if "attrs" not in item_table:
        item_table = item_table.assign(attrs=[[] for _ in range(len(item_table))])
    user_ids = np.asarray(user_ids)
    if user_table is not None:
        user_table = _align_users(user_table, user_ids)
    return Dataset(name=name, interactions=frame, items=item_table.reset_index(drop=True),
                   user_ids=user_ids, text_fields=list(text_fields or []), meta=dict(meta or {}), users=user_table)


ITEM_ORDER_SALT = "gr-harness item order v1"


def canonical_order(raw_ids: np.ndarray) -> np.ndarray:
    """The canonical item order: raw ids sorted by a salted sha256 of their text. Deterministic on every machine and
    independent of file order, first appearance or popularity, so that id arithmetic carries no signal."""
    keys = [hashlib.sha256(f"{ITEM_ORDER_SALT}:{raw}".encode()).hexdigest() for raw in raw_ids]
    return np.argsort(np.array(keys), kind="stable")


def _align_users(user_table: pd.DataFrame, user_ids: np.ndarray) -> pd.DataFrame:
    # Raw ids are compared as strings: loaders keep `user_ids` as str, files may give ints.
    if "user_id" not in user_table:
        raise ValueError("user table has no 'user_id' column")
    keys = user_table["user_id"].astype(str)
    if keys.duplicated().any():
        raise ValueError(f"user table repeats user ids, e.g. {keys[keys.duplicated()].iloc[0]!r}")
    position = pd.Series(np.arange(len(keys)), index=keys.to_numpy())
    wanted = pd.Index(np.asarray(user_ids).astype(str))
    missing = wanted.difference(position.index)
    if len(missing):
        raise ValueError(f"user table lacks {len(missing)} users with interactions, e.g. {missing[0]!r}")
    table = user_table.iloc[position.loc[wanted].to_numpy()].reset_index(drop=True)
    return table.assign(user_id=wanted.to_numpy())


def densify(raw_users: pd.Series, raw_items: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Map raw user/item ids to dense indices in order of first appearance: (users, items, user_ids, item_ids)."""
    user_codes, user_ids = pd.factorize(raw_users, sort=False)
    item_codes, item_ids = pd.factorize(raw_items, sort=False)
    return user_codes, item_codes, np.asarray(user_ids), np.asarray(item_ids)


def compute_split_id(dataset: Dataset, protocol: dict[str, Any]) -> str:
    """sha256 of the canonical data and the protocol parameters: the same on every machine and from every path to the
    same bytes, different whenever the data or the protocol differ (DESIGN §4.1)."""
    payload = json.dumps({"data": dataset.fingerprint(), "protocol": protocol}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def item_texts(items: pd.DataFrame, fields: Sequence[str]) -> list[str]:
    """The dataset card's text fields, joined per item ("title. brand. categories")."""
    present = [f for f in fields if f in items.columns]
    if not present:
        raise HarnessError(f"none of the text fields {list(fields)} is in the item table ({list(items.columns)})")
    columns = [items[f].fillna("").astype(str).tolist() for f in present]
    return [". ".join(v for v in values if v.strip()) for values in zip(*columns)]
