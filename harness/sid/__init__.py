"""Semantic IDs: tokenizers, collision handling, the validity trie and diagnostics, drawn from one provider.

    table, provenance = semantic_ids(items, text_fields, embedder="tfidf-svd", tokenizer="rkmeans",
                                     tokenizer_options={"levels": 3, "width": 256}, collisions="dedup-token")

Embeddings and codes are cached by content hash (embeddings, tokenizer config, seed), so every method and every seed
of a generator that asks for the same SIDs gets the same table without recomputation.
"""
from __future__ import annotations

import json

from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.data.interactions import TrainInteractions
from harness.errors import HarnessError
from harness.features import embed_items
from harness.features.cache import cached_arrays, content_key
from harness.nn.rng import own_rng
from harness.sid.collisions import STRATEGIES, SIDTable, build_table
from harness.sid.diagnostics import sid_report
from harness.sid.tokenizers import TOKENIZERS, SIDCodes, make_tokenizer
from harness.sid.trie import PrefixTrie


def fit_codes(embeddings: np.ndarray, tokenizer: str = "rkmeans", collaborative: np.ndarray | None = None,
              **options: Any) -> tuple[SIDCodes, dict[str, Any]]:
    """Codes for embeddings, cached by (embeddings, tokenizer identity[, collaborative embeddings]).
    Returns (codes, provenance). Tokenizers that learn from behaviour (`letter`) also take `collaborative`."""
    tok = make_tokenizer(tokenizer, **options)
    if tok.uses_collaborative and collaborative is None:
        raise HarnessError(f"tokenizer {tokenizer!r} needs collaborative item embeddings (e.g. from `sasrec-cf`)")
    key = content_key(embeddings, tok.identity(), *([collaborative] if tok.uses_collaborative else []))

    @own_rng  # a cache miss must leave the caller's RNG as a hit does
    def compute() -> dict[str, np.ndarray]:
        result = tok.fit(embeddings, collaborative) if tok.uses_collaborative else tok.fit(embeddings)
        return {"codes": result.codes, "widths": np.asarray(result.widths),
                "recon_error": np.asarray(np.nan if result.recon_error is None else result.recon_error),
                "info": np.asarray(json.dumps(result.info, sort_keys=True, default=str))}
    arrays, hit, seconds = cached_arrays("sids", key, compute, meta=tok.identity())
    error = float(arrays["recon_error"])
    # the tokenizer's own figures (LETTER: collisions before and after its resolution rounds); {} in older entries
    info = json.loads(str(arrays["info"])) if "info" in arrays else {}
    codes = SIDCodes(arrays["codes"].astype(np.int64), [int(w) for w in arrays["widths"]],
                     recon_error=None if np.isnan(error) else error, info=info)
    return codes, {**tok.identity(), "key": key, "cached": hit, "compute_seconds": seconds}


def uses_collaborative(tokenizer: str) -> bool:
    """Whether a tokenizer also reads collaborative item embeddings (LETTER); False for an unknown name, which
    `make_tokenizer` then reports."""
    cls = TOKENIZERS.find(tokenizer)
    return bool(cls is not None and cls.uses_collaborative)


def catalogue_options(tokenizer: str, items: pd.DataFrame, options: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer's options completed from the catalogue: an imported index file is keyed by an item's position in
    the data files, which the item table keeps as `source_index`."""
    if tokenizer == "index-file" and "source_index" in items:
        return {"order": items["source_index"].tolist(), **options}
    return options


def semantic_ids(items: pd.DataFrame, text_fields: Sequence[str], embedder: str = "tfidf-svd",
                 embedder_options: dict[str, Any] | None = None, tokenizer: str = "rkmeans",
                 tokenizer_options: dict[str, Any] | None = None, collisions: str = "dedup-token",
                 seed: int = 0, embeddings: np.ndarray | None = None, interactions: TrainInteractions | None = None,
                 collaborative_embedder: str = "sasrec-cf", collaborative_options: dict[str, Any] | None = None,
                 ) -> tuple[SIDTable, dict[str, Any]]:
    """The SID table of a catalogue. `interactions` (training split only) feed embedders and tokenizers that learn
    from behaviour: `embedder="sasrec-cf"`, or a tokenizer such as `letter` that also reads collaborative
    embeddings (from `collaborative_embedder`)."""
    provenance: dict[str, Any] = {}
    if embeddings is None:
        embeddings, provenance["embedder"] = embed_items(items, text_fields, embedder, interactions,
                                                         **(embedder_options or {}))
    else:
        provenance["embedder"] = {"embedder": "given", "key": content_key(embeddings)}
    collaborative = None
    if uses_collaborative(tokenizer):
        collaborative, provenance["collaborative"] = embed_items(items, text_fields, collaborative_embedder,
                                                                 interactions, **(collaborative_options or {}))
    options = catalogue_options(tokenizer, items, {"seed": seed, **(tokenizer_options or {})})
    codes, provenance["tokenizer"] = fit_codes(embeddings, tokenizer, collaborative, **options)
    table = build_table(codes.codes, codes.widths, collisions, seed)
    table.info["recon_error"] = codes.recon_error
    provenance["collisions"] = {"strategy": collisions, **table.info}
    return table, provenance


__all__ = ["STRATEGIES", "TOKENIZERS", "PrefixTrie", "SIDCodes", "SIDTable", "build_table",
           "fit_codes", "semantic_ids", "sid_report", "uses_collaborative"]
