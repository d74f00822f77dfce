"""User-item cross features (u2i), prefix-accumulated: a query (u, v, t) sees only exposures strictly before t.

For an exposure of item v to user u at time t, from the known exposures with ts < t:
  user: log activity, like rate, mean rating;
  user × v's categories (item `attrs`, e.g. genres), averaged over v's categories: log count, like rate, mean rating;
  item: log popularity so far, like rate so far.
Rates and means are shrunk toward the known data's global value (a few pseudo-exposures), so a first exposure gets
the prior rather than 0/0. At inference a query's t is `AFTER_ALL`, i.e. everything known counts; the known frame is
then what the method may see (training exposures, or a user's history before an evaluated block), never the block.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

CROSS_FEATURES = ("user_log_count", "user_like_rate", "user_mean_rating",
                  "user_cat_log_count", "user_cat_like_rate", "user_cat_mean_rating",
                  "item_log_count", "item_like_rate")
AFTER_ALL = np.iinfo(np.int64).max
PSEUDO_COUNT = 2.0


def _before(keys: pd.DataFrame, weights: pd.DataFrame, key_cols: list[str]) -> pd.DataFrame:
    """Per row: sums of `weights` over earlier rows with the same key (ts strictly smaller; equal ts never counts)."""
    frame = pd.concat([keys, weights], axis=1)
    grouped = frame.groupby(key_cols + ["ts"], sort=True)[list(weights.columns)].sum()
    totals = grouped.groupby(level=key_cols, sort=False).cumsum() - grouped  # strictly before this ts
    return keys.join(totals, on=key_cols + ["ts"])[list(weights.columns)]


def feature_priors(known: pd.DataFrame) -> tuple[float, float]:
    """(like rate, mean rating) of the known exposures: what rates and means are shrunk toward."""
    if "sampled" in known:
        known = known[~known["sampled"].to_numpy(bool)]
    if not len(known):
        return 0.5, 3.0
    ratings = known["rating"].to_numpy(float)
    labels = known["label"].to_numpy(float)
    return float(labels.mean()), float(labels.mean() if np.isnan(ratings).all() else np.nanmean(ratings))


def cross_features(known: pd.DataFrame, queries: pd.DataFrame, item_attrs: Sequence[Sequence[int]],
                   priors: tuple[float, float] | None = None) -> np.ndarray:
    """`[len(queries), len(CROSS_FEATURES)]` float32 features of each query row (columns user, item, ts), computed
    from `known` (columns user, item, ts, rating, label) rows strictly earlier than the query. Rows flagged
    `sampled` (negatives drawn by the protocol) were never shown to anyone: they are not counted. `priors` (see
    `feature_priors`) default to the known rows' own; pass the training ones when `known` is a few users' history."""
    if "sampled" in known:
        known = known[~known["sampled"].to_numpy(bool)]
    n_known = len(known)
    prior_label, prior_rating = priors if priors is not None else feature_priors(known)
    ratings = known["rating"].to_numpy(float)
    if n_known and np.isnan(ratings).all():  # positives without ratings (sampled-negative protocol): label stands in
        known = known.assign(rating=known["label"].astype(float))
    keys = pd.concat([known[["user", "item", "ts"]], queries[["user", "item", "ts"]]], ignore_index=True)
    keys = keys.astype(np.int64)
    is_known = np.r_[np.ones(n_known), np.zeros(len(queries))]
    weights = pd.DataFrame({"n": is_known,
                            "likes": np.r_[known["label"].to_numpy(float), np.zeros(len(queries))],
                            "stars": np.r_[known["rating"].to_numpy(float), np.zeros(len(queries))]})

    def summarise(sums: pd.DataFrame) -> np.ndarray:
        n = sums["n"].to_numpy()
        like = (sums["likes"].to_numpy() + PSEUDO_COUNT * prior_label) / (n + PSEUDO_COUNT)
        stars = (sums["stars"].to_numpy() + PSEUDO_COUNT * prior_rating) / (n + PSEUDO_COUNT) - prior_rating
        return np.stack([np.log1p(n), like, stars], axis=1)

    user = summarise(_before(keys[["user", "ts"]], weights, ["user"]))[n_known:]
    item = summarise(_before(keys[["item", "ts"]], weights, ["item"]))[n_known:, :2]

    # user × category: one row per (exposure, category of its item), averaged back over the query item's categories
    attrs = pd.Series([list(a) for a in item_attrs], dtype=object)
    rows = np.arange(len(keys))
    cats = attrs.iloc[keys["item"].to_numpy()].reset_index(drop=True)
    exploded = pd.DataFrame({"row": rows, "cat": cats}).explode("cat").dropna(subset=["cat"])
    by_cat = np.tile([0.0, prior_label, 0.0], (len(queries), 1))
    if len(exploded):
        exploded["cat"] = exploded["cat"].astype(np.int64)
        source = exploded["row"].to_numpy(np.int64)
        cat_keys = pd.DataFrame({"user": keys["user"].to_numpy()[source], "cat": exploded["cat"].to_numpy(),
                                 "ts": keys["ts"].to_numpy()[source]})
        sums = _before(cat_keys, weights.iloc[source].reset_index(drop=True), ["user", "cat"])
        values = pd.DataFrame(summarise(sums), columns=["c", "l", "s"])
        values["row"] = source
        values = values[values["row"] >= n_known]
        mean = values.groupby("row")[["c", "l", "s"]].mean()
        by_cat[mean.index.to_numpy() - n_known] = mean.to_numpy()
    return np.concatenate([user, by_cat, item], axis=1).astype(np.float32)


class ItemHistory:
    """The item-level cross features (log popularity, like rate) of the known exposures as of any time: what
    `cross_features` gives in its item columns, looked up by binary search instead of recomputed. At inference a
    query's time is the evaluated user's own moment (after their last known exposure), so other users' later
    exposures, the future for that user, never count."""

    def __init__(self, known: pd.DataFrame, priors: tuple[float, float]):
        if "sampled" in known:
            known = known[~known["sampled"].to_numpy(bool)]
        items = known["item"].to_numpy(np.int64)
        ts = known["ts"].to_numpy(np.int64)
        self.t0 = int(ts.min()) if len(ts) else 0
        self.stride = (int(ts.max()) - self.t0 + 2) if len(ts) else 2  # one (item, time) key: item * stride + time
        self.keys = np.sort(items * self.stride + (ts - self.t0))
        order = np.argsort(items * self.stride + (ts - self.t0), kind="stable")
        self.likes = np.r_[0.0, np.cumsum(known["label"].to_numpy(float)[order])]
        self.prior_label = priors[0]

    def at(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        """`[len(items), 2]` float32: each item's features from the known exposures strictly before its time."""
        items, times = np.asarray(items, np.int64), np.asarray(times, np.int64)
        offset = np.clip(times - self.t0, 0, self.stride - 1)  # before every known time → 0; after all → all
        first = np.searchsorted(self.keys, items * self.stride, side="left")
        end = np.searchsorted(self.keys, items * self.stride + offset, side="left")
        n = (end - first).astype(float)
        likes = self.likes[end] - self.likes[first]
        like = (likes + PSEUDO_COUNT * self.prior_label) / (n + PSEUDO_COUNT)
        return np.stack([np.log1p(n), like], axis=1).astype(np.float32)


def exposures_from_sequences(sequences: Sequence[np.ndarray], n_items: int, per_positive: int = 1,
                             seed: int = 0) -> pd.DataFrame:
    """Labelled rows for data without exposures (leave-one-out sequences): every interaction a positive at its
    position, plus `per_positive` items the user never interacted with, labelled 0 and flagged `sampled`."""
    from harness.data.labelled import sample_negatives
    lengths = [len(s) for s in sequences]
    frame = pd.DataFrame({"user": np.repeat(np.arange(len(sequences)), lengths),
                          "item": np.concatenate(sequences) if sequences else np.zeros(0, np.int64),
                          "ts": np.concatenate([np.arange(n) for n in lengths]) if sequences else [],
                          "rating": np.nan, "label": 1, "sampled": False})
    frame = pd.concat([frame, sample_negatives(frame, n_items, per_positive, seed)])
    return frame.sort_values(["user", "ts", "sampled"], kind="stable").reset_index(drop=True)


def candidate_queries(users: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    """Query rows (user, item) scored after everything known: inference over an evaluated block."""
    return pd.DataFrame({"user": np.asarray(users, dtype=np.int64), "item": np.asarray(items, dtype=np.int64),
                         "ts": np.full(len(items), AFTER_ALL, dtype=np.int64)})
