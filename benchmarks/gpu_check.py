"""GPU readiness in one short script (at most ~5 minutes on a CUDA device).

1. Parity: a tiny SID transformer, built once on the CPU and copied to the device, gives the same teacher-forced
   logits, the same gradients (training mode, dropout off) and the same beam-search SIDs on both, within float
   tolerance.
2. Throughput: every neural method at its default (paper) sizes on `--dataset` (default beauty; dig on ml-100k,
   the labelled protocol it needs) runs `--steps` training steps of its own training loop on the device (the fit up
   to the loop is not timed; features and SIDs come from the cache when present), then decodes `--valid-users`
   validation users; prints step time, samples/s and validation users/s. Methods left when `--budget-s` is spent
   are listed as skipped.

On a CPU (`--device cpu`, the script's test) the parity check compares the CPU with itself and the throughput rows
are CPU figures. Usage:
    python benchmarks/gpu_check.py                        # cuda, every method, beauty
    python benchmarks/gpu_check.py --device cpu --track smoke --methods sasrec,tiger --steps 2 --valid-users 16
`--embedder` (default tfidf-svd, which needs no model download) is passed to the methods that embed item text.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_efficiency as te  # noqa: E402  (the benchmark beside this one: its capture of training loops)

from harness import registry  # noqa: E402
from harness.nn.beam import beam_search  # noqa: E402
from harness.nn.transformer import ModelShape, SIDTransformer  # noqa: E402
from harness.run.referee import resolve_device  # noqa: E402
from harness.run.spec import RunSpec  # noqa: E402
from harness.run.tracks import load_track  # noqa: E402

METHODS = list(te.METHODS)  # the neural methods, as the efficiency benchmark lists them


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parity(device: torch.device, atol: float = 1e-4) -> dict[str, float]:
    """Largest differences CPU vs device of logits, gradients and beam scores; raises if beyond `atol` or if the
    beams differ."""
    torch.manual_seed(0)
    shape = ModelShape(widths=[16, 16, 8], user_buckets=11, d_model=64, heads=4, d_head=16, d_ff=128, enc_layers=2,
                       dec_layers=2, dropout=0.0, max_history=8)
    cpu = SIDTransformer(shape)
    other = SIDTransformer(shape).to(device)
    other.load_state_dict(cpu.state_dict())
    g = torch.Generator().manual_seed(1)
    sids = torch.randint(0, 8, (32, 8, 3), generator=g)
    for row in range(32):
        sids[row, :row % 9] = -1  # histories of every length, two empty
    users, target = torch.arange(32), torch.randint(0, 8, (32, 3), generator=g)
    out = []
    for model, on in ((cpu, torch.device("cpu")), (other, device)):
        model.train()
        logits = model(sids.to(on), users.to(on), target.to(on))
        loss = sum(lg.square().mean() for lg in logits)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        model.eval()
        beams, scores = beam_search(model, sids.to(on), users.to(on), 10)
        out.append(([lg.detach().cpu() for lg in logits], [None if x is None else x.cpu() for x in grads],
                    beams.cpu(), scores.cpu()))
    (l0, g0, b0, s0), (l1, g1, b1, s1) = out
    diff = {"logits": max(float((a - b).abs().max()) for a, b in zip(l0, l1)),
            "grads": max(float((a - b).abs().max()) for a, b in zip(g0, g1) if a is not None),
            "beam_scores": float((s0 - s1).abs().max())}
    if max(diff.values()) > atol or not torch.equal(b0, b1):
        raise AssertionError(f"CPU and {device} disagree: {diff}, beams equal: {torch.equal(b0, b1)}")
    return diff


def throughput(name: str, spec: RunSpec, device: torch.device, steps: int, valid_users: int) -> dict:
    prepared, method, step, batches, per_epoch, setup_s = te.capture(spec, device)
    batch_size = int(prepared.config.get("batch_size", 0)) or None
    for batch in batches[:2]:  # warm-up (kernels, allocator)
        step(batch)
    _sync(device)
    times = []
    for i in range(steps):
        begin = time.perf_counter()
        step(batches[(2 + i) % len(batches)])
        _sync(device)
        times.append(time.perf_counter() - begin)
    step_s = statistics.median(times)
    row = {"method": name, "dataset": spec.dataset, "setup_s": round(setup_s, 1), "step_ms": round(1000 * step_s, 1),
           "samples_per_s": round(batch_size / step_s, 1) if batch_size else None,
           "epoch_s": round(per_epoch * step_s, 1)}
    row.update(te._validation_speed(method, prepared, valid_users))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--track", help="take sizes and datasets from a track instead of the paper defaults")
    parser.add_argument("--embedder", default="tfidf-svd")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--valid-users", type=int, default=512)
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting methods after this many seconds")
    args = parser.parse_args()
    start = time.perf_counter()
    device = resolve_device(args.device)
    te._patch_training_loops()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}", flush=True)
    print("parity CPU vs device, largest differences:", parity(device), "- ok", flush=True)
    rows, skipped = [], []
    for method in args.methods.split(","):
        if time.perf_counter() - start > args.budget_s:
            skipped.append(method)
            continue
        dataset = "ml-100k" if method == "dig" else args.dataset
        # the methods that embed item text are those with an embedder in their config (as a track pins it)
        overrides = {"embedder": args.embedder} if "embedder" in registry.get(method).default_config else {}
        if args.track:  # the track's sizes and first dataset
            track = load_track(args.track)
            spec = RunSpec.for_track(track, method, track.datasets[0], overrides=overrides, device=str(device))
        else:
            spec = RunSpec(method=method, dataset=dataset, overrides=overrides, device=str(device),
                           protocol={"name": "labelled"} if method == "dig" else {})
        print(f"{method} on {spec.dataset} ...", flush=True)
        rows.append(throughput(method, spec, device, args.steps, args.valid_users))
    from tabulate import tabulate
    columns = ["method", "dataset", "setup_s", "step_ms", "samples_per_s", "epoch_s", "valid_users_per_s"]
    print(tabulate([[r.get(c) for c in columns] for r in rows], headers=columns))
    if skipped:
        print("skipped (budget spent):", ", ".join(skipped))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
