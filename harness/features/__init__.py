"""Item features: embeddings of item text or attributes, cached by content hash."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from pandas.util import hash_pandas_object

from harness.features.cache import cached_arrays, content_key
from harness.features.embedders import EMBEDDERS, Embedder, item_texts, make_embedder


def items_fingerprint(items: pd.DataFrame, fields: Sequence[str]) -> str:
    """Hash of exactly the item content an embedder reads (text fields and attributes)."""
    cols = [c for c in [*fields, "attrs"] if c in items.columns]
    return content_key(hash_pandas_object(items[cols].astype(str), index=True).to_numpy())


def embed_items(items: pd.DataFrame, text_fields: Sequence[str], name: str = "tfidf-svd",
                **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings [n_items, d] and their provenance (embedder identity, fields, cache key, cache hit)."""
    emb = make_embedder(name, **options)
    fields = list(text_fields) if emb.uses_text else []
    key = content_key(emb.identity(), fields, items_fingerprint(items, fields))
    arrays, hit = cached_arrays("embeddings", key, lambda: {"x": emb.embed(items, fields)},
                                meta={**emb.identity(), "fields": fields, "n_items": len(items)})
    return arrays["x"], {**emb.identity(), "fields": fields, "key": key, "cached": hit, "dim": int(arrays["x"].shape[1])}


__all__ = ["EMBEDDERS", "Embedder", "embed_items", "item_texts", "make_embedder"]
