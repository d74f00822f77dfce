"""One loader per upstream format. Each returns a canonical `Dataset` (see dataset.py)."""
from __future__ import annotations

import ast
import csv
import gzip
import inspect
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from harness.config import Registry
from harness.data.cards import Card, data_root, verified_paths
from harness.data.dataset import Dataset, build_dataset, densify
from harness.data.synthetic import generate_synthetic
from harness.errors import ConfigError, DataError

# One loader per upstream format: (card, verified file paths by role, options) → Dataset.
LOADERS: Registry[Callable[[Card, dict[str, Path], dict], Dataset]] = Registry("dataset format", error=DataError)
loader = LOADERS.register  # @loader("format") registers a function under that format name
# Options a format reads beyond those its card lists (`--data-set key=value`).
LOADER_OPTIONS: dict[str, tuple[str, ...]] = {
    "synthetic": tuple(p for p in inspect.signature(generate_synthetic).parameters if p not in ("name", "text_fields")),
    "s3rec": ("attribute_names_from_datamaps",), "mcauley2014": ("k_core",)}


def load_dataset(card: Card, data_dir: str | Path | None = None, **overrides) -> Dataset:
    """Verify the card's files (sha256) and load them into canonical tables."""
    if card.format not in LOADERS:
        raise DataError(f"dataset card {card.name!r} names unknown format {card.format!r}; "
                        f"known: {', '.join(LOADERS)}")
    known = set(card.options) | set(LOADER_OPTIONS.get(card.format, ()))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"dataset {card.name!r} has no option(s) {unknown}; its options: "
                          f"{', '.join(sorted(known)) or 'none'}")
    paths = verified_paths(card, data_root(data_dir)) if card.files else {}
    options = {**card.options, **overrides}
    try:
        dataset = LOADERS.get(card.format)(card, paths, options)
    except (ValueError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"dataset {card.name!r}: could not parse its files ({type(exc).__name__}: {exc})") from None
    dataset.meta.setdefault("card", card.name)
    if card.labels and dataset.has_labels:
        dataset.meta.setdefault("labels", dict(card.labels))
    return dataset


def _read_s3rec_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    users, items, positions, user_ids = [], [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        uid = len(user_ids)
        user_ids.append(parts[0])
        seq = [int(x) - 1 for x in parts[1:]]  # S3-Rec ids are 1-based
        users.extend([uid] * len(seq))
        items.extend(seq)
        positions.extend(range(len(seq)))
    return np.array(users), np.array(items), np.array(positions), user_ids


def _beauty_attribute_names(datamaps: dict) -> dict[int, str]:
    """S3-Rec's attribute k is the k-th P5 attribute (in id order) seen at least 5 times."""
    counts = datamaps["attributeid2num"]
    kept = [aid for aid in sorted(counts, key=int) if counts[aid] >= 5]
    return {k + 1: datamaps["id2attribute"][aid] for k, aid in enumerate(kept)}


@loader("s3rec")
def load_s3rec(card: Card, paths: dict[str, Path], options: dict) -> Dataset:
    """Amazon 2014 5-core / Yelp as S3-Rec sequence files, joined with ASINs, short titles and attributes."""
    users, items, positions, user_ids = _read_s3rec_sequences(paths["sequences"])
    n_items = int(items.max()) + 1
    table = pd.DataFrame({"item_id": [str(i + 1) for i in range(n_items)]})
    attr_names: dict[int, str] = {}
    if "asin_map" in paths:
        datamaps = json.loads(paths["asin_map"].read_text())
        id2item = datamaps["id2item"]
        if "s3rec_to_map_ids" in paths:  # Toys: the datamaps number items differently
            remap = json.loads(paths["s3rec_to_map_ids"].read_text())
            table["asin"] = [id2item.get(remap.get(str(i + 1), ""), "") for i in range(n_items)]
        else:
            table["asin"] = [id2item.get(str(i + 1), "") for i in range(n_items)]
        if options.get("attribute_names_from_datamaps"):
            attr_names = _beauty_attribute_names(datamaps)
    if "titles" in paths:
        titles = {}
        for line in paths["titles"].read_text().splitlines():
            asin, _, words = line.partition(" ")
            titles[asin] = words.strip()
        table["title"] = [titles.get(a, "") for a in table.get("asin", [""] * n_items)]
    if "lcrec_items" in paths:  # Yelp: keyed by S3-Rec id - 1
        meta = json.loads(paths["lcrec_items"].read_text())
        table["title"] = [meta.get(str(i), {}).get("title", "") for i in range(n_items)]
        table["description"] = [meta.get(str(i), {}).get("description", "") for i in range(n_items)]
    attrs = [[] for _ in range(n_items)]
    if "attributes" in paths:
        for key, values in json.loads(paths["attributes"].read_text()).items():
            if 0 < int(key) <= n_items:
                attrs[int(key) - 1] = [int(v) for v in values]
    table["attrs"] = attrs
    if attr_names:
        table["attributes"] = [", ".join(attr_names[a] for a in row if a in attr_names) for row in attrs]
    return build_dataset(card.name, users, items, positions, table, user_ids=np.array(user_ids),
                         text_fields=card.text_fields, meta={"ts": "position"})


@loader("lcrec")
def load_lcrec(card: Card, paths: dict[str, Path], options: dict) -> Dataset:
    """LC-Rec / LETTER json: {user: [item, ...]} (0-based, chronological) + {item: {title, description, ...}}."""
    inter = json.loads(paths["interactions"].read_text())
    meta = json.loads(paths["items"].read_text())
    n_items = max(int(k) for k in meta) + 1
    users, items, positions, user_ids = [], [], [], []
    for uid, (raw_user, seq) in enumerate(sorted(inter.items(), key=lambda kv: int(kv[0]))):
        bad = [i for i in seq if not isinstance(i, int) or isinstance(i, bool) or i < 0]
        if bad:
            raise DataError(f"{paths['interactions']}: user {raw_user!r} has item id {bad[0]!r}; item ids are "
                            f"non-negative integers (0-based, as the item file's keys)")
        user_ids.append(raw_user)
        users.extend([uid] * len(seq))
        items.extend(int(i) for i in seq)
        positions.extend(range(len(seq)))
    n_items = max(n_items, max(items) + 1)
    fields = ["title", "description", "brand", "categories"]
    table = pd.DataFrame({"item_id": [str(i) for i in range(n_items)]})
    for f in fields:
        table[f] = [_as_text(meta.get(str(i), {}).get(f, "")) for i in range(n_items)]
    return build_dataset(card.name, np.array(users), np.array(items), np.array(positions), table,
                         user_ids=np.array(user_ids), text_fields=card.text_fields, meta={"ts": "position"})


def _as_text(value) -> str:
    if isinstance(value, list):
        return ", ".join(_as_text(v) for v in value)
    return "" if value is None else str(value)


@loader("movielens-latest")
def load_movielens_latest(card: Card, paths: dict[str, Path], options: dict) -> Dataset:
    """ml-latest-small: ratings.csv ordered by timestamp per user, ratings kept; movies.csv gives title + genres."""
    ratings = pd.read_csv(paths["ratings"])
    movies = pd.read_csv(paths["movies"])
    ratings = ratings.sort_values(["userId", "timestamp"], kind="stable")
    users, items, user_ids, item_ids = densify(ratings["userId"], ratings["movieId"])
    info = movies.set_index("movieId")
    table = pd.DataFrame({"item_id": item_ids.astype(str)})
    table["title"] = [info["title"].get(m, "") for m in item_ids]
    table["genres"] = [str(info["genres"].get(m, "")).replace("|", ", ") for m in item_ids]
    genre_lists = [_split_genres(info["genres"].get(m, "")) for m in item_ids]
    # Genre ids by sorted name over the whole movies file, so they do not depend on which movies were rated.
    vocabulary = sorted({g for value in movies["genres"] for g in _split_genres(value)})
    index = {g: k for k, g in enumerate(vocabulary)}
    table["attrs"] = [[index[g] for g in genres] for genres in genre_lists]
    return build_dataset(card.name, users, items, ratings["timestamp"].to_numpy(), table,
                         ratings=ratings["rating"].to_numpy(), user_ids=user_ids.astype(str),
                         text_fields=card.text_fields, meta={"ts": "unix"})


def _split_genres(value) -> list[str]:
    if not isinstance(value, str) or value in ("", "(no genres listed)"):
        return []
    return value.split("|")


# MovieLens 1M's age buckets (under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+), applied to 100K's exact ages.
_AGE_BOUNDS = [18, 25, 35, 45, 50, 56]


@loader("movielens-100k")
def load_movielens_100k(card: Card, paths: dict[str, Path], options: dict) -> Dataset:
    """GroupLens ml-100k: u.data ratings (unix time), u.item titles + 19 genre flags, u.user demographics.

    Dense ids follow the raw ids in ascending order, so item k is row k of u.item (raw id k + 1).
    """
    ratings = pd.read_csv(paths["ratings"], sep="\t", header=None, names=["user", "item", "rating", "ts"],
                          dtype={"user": np.int64, "item": np.int64, "rating": np.float64, "ts": np.int64})
    genre_rows = [line.split("|") for line in paths["genres"].read_text(encoding="latin-1").splitlines() if line.strip()]
    genre_names = [name for name, _ in sorted(genre_rows, key=lambda row: int(row[1]))]
    movie_cols = ["item", "title", "release", "video_release", "imdb", *(f"g{k}" for k in range(len(genre_names)))]
    # Titles contain quotes: read every field verbatim.
    movies = pd.read_csv(paths["movies"], sep="|", header=None, names=movie_cols, encoding="latin-1",
                         quoting=csv.QUOTE_NONE, keep_default_na=False, dtype=str)
    movies["item"] = movies["item"].astype(np.int64)
    movies = movies.sort_values("item", kind="stable").reset_index(drop=True)
    flags = movies[[f"g{k}" for k in range(len(genre_names))]].astype(np.int64).to_numpy()
    attrs = [[int(k) for k in np.flatnonzero(row)] for row in flags]
    table = pd.DataFrame({"item_id": movies["item"].astype(str), "title": movies["title"],
                          "genres": [", ".join(genre_names[k] for k in row) for row in attrs], "attrs": attrs})

    people = pd.read_csv(paths["users"], sep="|", header=None, names=["user", "age", "gender", "occupation", "zip"],
                         encoding="latin-1", dtype={"user": np.int64, "age": np.int64, "gender": str,
                                                    "occupation": str, "zip": str}, keep_default_na=False)
    occupations = {name: k for k, name in enumerate(sorted(people["occupation"].unique()))}
    user_table = pd.DataFrame({
        "user_id": people["user"].astype(str),
        "age_group": np.searchsorted(_AGE_BOUNDS, people["age"].to_numpy(), side="right").astype(np.int64),
        "gender": (people["gender"] == "M").astype(np.int64),  # 0 = F, 1 = M
        "occupation": people["occupation"].map(occupations).astype(np.int64),
    })

    item_index = pd.Index(movies["item"])
    items = item_index.get_indexer(ratings["item"])
    if (items < 0).any():
        raise ValueError(f"u.data rates {int((items < 0).sum())} movies that u.item does not list")
    raw_users = np.sort(ratings["user"].unique())
    users = np.searchsorted(raw_users, ratings["user"].to_numpy())
    return build_dataset(card.name, users, items, ratings["ts"].to_numpy(), table,
                         ratings=ratings["rating"].to_numpy(), user_ids=raw_users.astype(str),
                         text_fields=card.text_fields, meta={"ts": "unix"}, user_table=user_table)


def _read_json_lines(path: Path):
    """McAuley 2014 files: gzip, one record a line, strict JSON (reviews) or a Python dict literal (metadata)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                yield ast.literal_eval(line)


def k_core(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Repeatedly drop users and items with fewer than k interactions."""
    while True:
        user_ok = frame.groupby("user")["item"].transform("size") >= k
        item_ok = frame.groupby("item")["user"].transform("size") >= k
        keep = user_ok & item_ok
        if keep.all():
            return frame
        frame = frame[keep]


@loader("mcauley2014")
def load_mcauley2014(card: Card, paths: dict[str, Path], options: dict) -> Dataset:
    """Raw McAuley Amazon 2014 files: reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz, k-core, chronological."""
    rows = [(r["reviewerID"], r["asin"], int(r["unixReviewTime"])) for r in _read_json_lines(paths["reviews"])]
    frame = pd.DataFrame(rows, columns=["user", "item", "ts"])
    frame = k_core(frame, int(options.get("k_core", 5))).sort_values(["user", "ts"], kind="stable")
    users, items, user_ids, item_ids = densify(frame["user"], frame["item"])
    meta = {}
    if "meta" in paths:
        wanted = set(item_ids)
        for record in _read_json_lines(paths["meta"]):
            if record.get("asin") in wanted:
                meta[record["asin"]] = record
    table = pd.DataFrame({"item_id": item_ids.astype(str)})
    table["title"] = [_as_text(meta.get(a, {}).get("title", "")) for a in item_ids]
    table["price"] = [_as_text(meta.get(a, {}).get("price", "")) for a in item_ids]
    table["brand"] = [_as_text(meta.get(a, {}).get("brand", "")) for a in item_ids]
    table["categories"] = [_as_text(sum(meta.get(a, {}).get("categories", []), [])) for a in item_ids]
    return build_dataset(card.name, users, items, frame["ts"].to_numpy(), table, user_ids=user_ids.astype(str),
                         text_fields=card.text_fields, meta={"ts": "unix"})


@loader("synthetic")
def load_synthetic(card: Card, paths: dict[str, Path], options: dict) -> Dataset:
    return generate_synthetic(name=card.name, text_fields=card.text_fields, **options)
