"""SID diagnostics: how well a tokenizer's codes use their codebooks and reflect what users do."""
from __future__ import annotations

from typing import Any

import numpy as np

from harness.data.interactions import TrainInteractions, require_train


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def sid_report(codes: np.ndarray, widths: list[int], recon_error: float | None = None,
               interactions: TrainInteractions | None = None) -> dict[str, Any]:
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    report: dict[str, Any] = {"items": n, "levels": levels, "widths": list(widths)}
    per_level = []
    for level in range(levels):
        counts = np.bincount(codes[:, level], minlength=widths[level])
        prefixes, inverse = np.unique(codes[:, :level], axis=0, return_inverse=True) if level else \
            (np.zeros((1, 0)), np.zeros(n, dtype=np.int64))
        pairs = np.unique(np.stack([inverse.reshape(-1), codes[:, level]], 1), axis=0)
        per_level.append({
            "level": level,
            "utilisation": float((counts > 0).sum() / widths[level]),
            "entropy_bits": round(_entropy_bits(counts), 4),
            "entropy_ratio": round(_entropy_bits(counts) / np.log2(widths[level]), 4) if widths[level] > 1 else 1.0,
            "prefix_fanout": round(len(pairs) / len(prefixes), 3),
        })
    report["per_level"] = per_level
    _, sizes = np.unique(codes, axis=0, return_counts=True)
    report["unique_sids"] = int(len(sizes))
    report["collision_rate"] = round(float(1 - len(sizes) / n), 6)  # share of items beyond one per SID
    report["items_in_collisions"] = int(sizes[sizes > 1].sum())
    report["largest_group"] = int(sizes.max())
    report["mean_group_size"] = round(float(n / len(sizes)), 4)
    report["recon_error"] = recon_error
    if interactions is not None:
        report["neighbourhood"] = neighbourhood_agreement(codes, require_train(interactions))
    return report


def neighbourhood_agreement(codes: np.ndarray, interactions: TrainInteractions) -> list[dict[str, float]]:
    """For consecutive training pairs (i → j, i ≠ j): share with the same prefix of length l, and the share
    expected if codes were unrelated to behaviour (sum over prefixes of the squared interaction share)."""
    prev, nxt = interactions.transitions()
    keep = prev != nxt
    prev, nxt = prev[keep], nxt[keep]
    out = []
    if len(prev) == 0:
        return out
    for length in range(1, codes.shape[1] + 1):
        _, prefix = np.unique(codes[:, :length], axis=0, return_inverse=True)
        prefix = prefix.reshape(-1)
        same = float((prefix[prev] == prefix[nxt]).mean())
        share = np.bincount(prefix[nxt], minlength=prefix.max() + 1) / len(nxt)
        share_prev = np.bincount(prefix[prev], minlength=prefix.max() + 1) / len(prev)
        chance = float((share * share_prev).sum())
        out.append({"prefix_len": length, "same_prefix": round(same, 5), "chance": round(chance, 5),
                    "lift": round(same / chance, 3) if chance > 0 else None})
    return out
