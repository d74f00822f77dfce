"""Canonical tables every loader produces: interactions (user, item, ts[, rating]) and items (id, text, attrs)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class Dataset:
    """Users and items are dense indices (0..n-1); raw ids are kept in `user_ids` and `items.item_id`.

    `interactions` is sorted by (user, ts) with ties kept in file order, so each user's rows are their sequence.
    `ts` is a unix time where the source has one, else the position in the user's sequence.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    user_ids: np.ndarray
    text_fields: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

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
                  text_fields: list[str] | None = None, meta: dict[str, Any] | None = None) -> Dataset:
    """Canonicalise raw arrays: users/items must already be dense indices; rows sorted stably by (user, ts)."""
    frame = pd.DataFrame({"user": np.asarray(users, dtype=np.int64), "item": np.asarray(items, dtype=np.int64),
                          "ts": np.asarray(ts, dtype=np.int64)})
    if ratings is not None:
        frame["rating"] = np.asarray(ratings, dtype=np.float64)
    frame = frame.sort_values(["user", "ts"], kind="stable").reset_index(drop=True)
    n_users = int(frame["user"].max()) + 1 if len(frame) else 0
    if user_ids is None:
        user_ids = np.arange(n_users).astype(str)
    if "attrs" not in item_table:
        item_table = item_table.assign(attrs=[[] for _ in range(len(item_table))])
    return Dataset(name=name, interactions=frame, items=item_table.reset_index(drop=True),
                   user_ids=np.asarray(user_ids), text_fields=list(text_fields or []), meta=dict(meta or {}))


def densify(raw_users: pd.Series, raw_items: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Map raw user/item ids to dense indices in order of first appearance: (users, items, user_ids, item_ids)."""
    user_codes, user_ids = pd.factorize(raw_users, sort=False)
    item_codes, item_ids = pd.factorize(raw_items, sort=False)
    return user_codes, item_codes, np.asarray(user_ids), np.asarray(item_ids)
