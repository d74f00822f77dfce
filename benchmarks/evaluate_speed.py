"""Evaluator speed at Beauty's size: 22,363 users × 12,101 items, full-catalogue pessimistic ranks.

Prints seconds for the vectorised evaluator over all users and, for scale, the naive per-user loop on a sample,
extrapolated; both measured in this one run, on one core by default (the target: at most 1 s for Beauty's size).
Usage: python benchmarks/evaluate_speed.py [--users N --items M --threads T]
"""
import argparse
import time

import torch

from harness.metrics import metrics_from_ranks, ranks_from_scores


def naive_rank(scores: torch.Tensor, target: int) -> int:
    t = float(scores[target])
    return sum(1 for s in scores.tolist() if s > t) + sum(1 for s in scores.tolist() if s == t) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=22363)
    parser.add_argument("--items", type=int, default=12101)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--naive-sample", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, args.items, (args.users,), generator=gen)
    histories = [torch.randint(0, args.items, (8,), generator=gen).numpy() for _ in range(args.users)]
    chunks = [torch.randn(min(args.batch, args.users - s), args.items, generator=gen)
              for s in range(0, args.users, args.batch)]
    for exclude in (False, True):
        start = time.perf_counter()
        ranks = []
        for i, scores in enumerate(chunks):
            lo = i * args.batch
            ranks.append(ranks_from_scores(scores, targets[lo:lo + len(scores)],
                                           histories[lo:lo + len(scores)] if exclude else None))
        metrics_from_ranks(torch.cat(ranks), [5, 10, 20, 50])
        print(f"vectorised, exclude_history={exclude}: {time.perf_counter() - start:.2f}s for "
              f"{args.users} users x {args.items} items")
    start = time.perf_counter()
    for u in range(args.naive_sample):
        naive_rank(chunks[0][u], int(targets[u]))
    per_user = (time.perf_counter() - start) / args.naive_sample
    vec = None
    start = time.perf_counter()
    ranks_from_scores(chunks[0][:args.naive_sample], targets[:args.naive_sample])
    vec = (time.perf_counter() - start) / args.naive_sample
    print(f"naive loop: {per_user * args.users:.1f}s extrapolated; per-user ratio naive/vectorised = {per_user / vec:.0f}x")


if __name__ == "__main__":
    main()
