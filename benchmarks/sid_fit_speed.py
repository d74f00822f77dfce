"""Tokenizer fit time at Beauty's size: 12,101 items × 384 dims (clustered synthetic embeddings), L × W = 3 × 256.

Prints seconds for RK-Means and RQ-VAE (and optionally R-VQ / balanced k-means) measured in this one run, with
their ratio to RK-Means. Usage: python benchmarks/sid_fit_speed.py [--items N --dim D --rqvae-epochs E]
"""
import argparse
import time

import numpy as np

from harness.sid.tokenizers import make_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=12101)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rqvae-epochs", type=int, default=100)
    parser.add_argument("--all", action="store_true", help="also time rvq and balanced")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(300, args.dim))
    x = (centers[rng.integers(0, 300, args.items)] + 0.5 * rng.normal(size=(args.items, args.dim))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    runs = [("rkmeans", {}), ("rqvae", {"epochs": args.rqvae_epochs})]
    if args.all:
        runs += [("rvq", {"epochs": 20}), ("balanced", {})]
    times = {}
    for name, options in runs:
        start = time.perf_counter()
        codes = make_tokenizer(name, levels=3, width=256, seed=0, **options).fit(x).codes
        times[name] = time.perf_counter() - start
        unique = len(np.unique(codes, axis=0))
        print(f"{name:9s} {times[name]:7.2f}s  ({times[name] / times['rkmeans']:.1f}x rkmeans)  "
              f"unique SIDs {unique}/{args.items}  options {options}")


if __name__ == "__main__":
    main()
