"""The dataset SID report (`harness sids report`): fit (or load cached) SIDs for a whole catalogue and measure them.

Behaviour-derived inputs (a collaborative embedder, LETTER's CF embeddings, the neighbourhood agreement) come from
the training part of the card's default split only, through the leakage guard.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness.data import leave_one_out, load_card, load_dataset
from harness.data.interactions import TrainInteractions
from harness.features import embed_items
from harness.sid import build_table, catalogue_options, fit_codes, sid_report, uses_collaborative


def dataset_sid_report(dataset: str, tokenizer: str = "rkmeans", embedder: str = "tfidf-svd", levels: int = 3,
                       width: int = 256, seed: int = 0, collisions: str = "none",
                       tokenizer_options: dict[str, Any] | None = None,
                       embedder_options: dict[str, Any] | None = None,
                       collaborative_options: dict[str, Any] | None = None, data_dir: str | None = None,
                       out_dir: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """The report (per-level utilisation and entropy, collisions: items in collision groups and the largest group,
    for LETTER also before and after its collision-resolution rounds; fan-out, reconstruction error, neighbourhood
    agreement, provenance and timings) and, with `out_dir`, the JSON file it was stored in."""
    card = load_card(dataset)
    data = load_dataset(card, data_dir)
    split = leave_one_out(data, card.protocol)
    train = TrainInteractions.from_split(split, data.n_items)
    start = time.perf_counter()
    x, emb_info = embed_items(data.items, data.text_fields, embedder, train, **(embedder_options or {}))
    collaborative = None
    if uses_collaborative(tokenizer):
        collaborative, _ = embed_items(data.items, data.text_fields, "sasrec-cf", train,
                                       **(collaborative_options or {}))
    embed_s = time.perf_counter() - start
    options = {"levels": levels, "width": width, "seed": seed, **(tokenizer_options or {})}
    if tokenizer == "index-file":  # an imported index has its own shape
        options = {k: v for k, v in options.items() if k not in ("levels", "width")}
    options = catalogue_options(tokenizer, data.items, options)
    start = time.perf_counter()
    codes, tok_info = fit_codes(x, tokenizer, collaborative, **options)
    fit_s = time.perf_counter() - start
    table = build_table(codes.codes, codes.widths, collisions, seed)
    report = sid_report(codes.codes, codes.widths, codes.recon_error, train)
    report.update({"dataset": card.name, "split_id": split.split_id, "embedder": emb_info, "tokenizer": tok_info,
                   "collisions": {"strategy": collisions, **table.info},
                   # LETTER: the collision figures before and after its resolution rounds (None for tokenizers
                   # without such rounds, or a cache entry older than these figures)
                   "collision_resolution": codes.info.get("collision_resolution"),
                   "seconds": {"embed": round(embed_s, 2), "fit": round(fit_s, 2)}})
    path = None
    if out_dir is not None:
        (out_dir / "sids").mkdir(parents=True, exist_ok=True)
        path = out_dir / "sids" / f"{card.name}-{tokenizer}-{tok_info['key'][:12]}.json"
        path.write_text(json.dumps(report, indent=2, default=str))
    return report, path
