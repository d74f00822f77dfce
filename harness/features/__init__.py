"""Item features: embeddings of item text or attributes, cached by content hash."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from pandas.util import hash_pandas_object

from harness.data.dataset import item_texts
from harness.data.interactions import require_train
from harness.errors import HarnessError
from harness.features.cache import cached_arrays, content_key
from harness.features.embedders import EMBEDDERS, Embedder, make_embedder
from harness.nn.rng import own_rng


def items_fingerprint(items: pd.DataFrame, fields: Sequence[str]) -> str:
    """Hash of exactly the item content an embedder reads (text fields and attributes)."""
    # `source_index`: where each row sits in the data files, so rows read in file order (precomputed embeddings)
    # never meet a catalogue in another order through the cache
    cols = [c for c in [*fields, "attrs", "source_index"] if c in items.columns]
    return content_key(hash_pandas_object(items[cols].astype(str), index=True).to_numpy())


def interactions_fingerprint(interactions) -> str:
    """Hash of the training sequences (their items and where each user's sequence ends)."""
    seqs = interactions.sequences
    flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    return content_key(flat, np.array([len(s) for s in seqs], dtype=np.int64), interactions.n_items)


def embed_items(items: pd.DataFrame, text_fields: Sequence[str], name: str = "tfidf-svd", interactions=None,
                **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings [n_items, d] and their provenance (embedder identity, fields, cache key, cache hit).
    Embedders that learn from interactions (`sasrec-cf`) need `interactions` (a `TrainInteractions`)."""
    emb = make_embedder(name, **options)
    fields = list(text_fields) if emb.uses_text else []
    parts: list[Any] = [emb.identity(), fields, items_fingerprint(items, fields)]
    if emb.uses_interactions:
        if interactions is None:
            raise HarnessError(f"embedder {name!r} learns from the training split's interactions; it is available "
                               "where they are (a method's TrainView, `harness sids report`)")
        require_train(interactions)
        parts.append(interactions_fingerprint(interactions))
    key = content_key(*parts)

    @own_rng  # a cache miss must leave the caller's RNG as a hit does
    def compute() -> dict[str, np.ndarray]:
        return {"x": emb.embed(items, fields, interactions) if emb.uses_interactions else emb.embed(items, fields)}

    arrays, hit, seconds = cached_arrays("embeddings", key, compute,
                                         meta={**emb.identity(), "fields": fields, "n_items": len(items)})
    return arrays["x"], {**emb.identity(), "fields": fields, "key": key, "cached": hit, "compute_seconds": seconds,
                         "dim": int(arrays["x"].shape[1])}


def item_features(train, embedder: str | None, options: dict[str, Any] | None = None) -> np.ndarray | None:
    """The catalogue's feature matrix from `embedder` for a plugin's item tower (None / "none": id-only); recorded in
    the TrainView's provenance, so the run record says which features were used."""
    if not embedder or embedder == "none":
        return None
    with train.stage("features"):
        matrix, provenance = embed_items(train.items, train.text_fields, embedder, **(options or {}))
    train.provenance.setdefault("features", []).append(provenance)
    return matrix


__all__ = ["EMBEDDERS", "Embedder", "embed_items", "item_features", "item_texts", "make_embedder"]
