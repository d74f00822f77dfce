"""How close each neural method's training step comes to the CPU's matmul rate, measured side by side in one process.

For every method at its track's shape on its real dataset (cpu-small / scientific; dig: cpu-labelled / ml-100k),
the method's own fit runs up to its training loop, which is then stopped and driven here:
- FLOPs of one training step (forward + backward, `torch.utils.flop_counter.FlopCounterMode`);
- step time (median of `--steps` optimiser steps after two warm-up steps) and the achieved GFLOP/s;
- in the same process, fp32 and bf16 matmul rates at the step's three most expensive matmul shapes and at 2048³, and
  the step's rate as a share of the fp32 rate at its own shapes;
- an epoch's time at that step rate (batches per epoch × step time) and, where the method can recommend right
  away, its validation speed (users/s over `--valid-users` validation users, the run's own decoding).
The dataset's features and SIDs come from the run's caches (a first run fits them; that time is not counted).

Usage: python benchmarks/train_efficiency.py [--methods tiger,gr] [--steps 10] [--threads 1] [--precision bf16]
       [--json] [--baseline REV] [--compare-precisions]; `--compare-precisions` times fp32 and bf16 steps
       alternately in one process and prints bf16's speed-up.
With `--baseline REV` (a git revision) each method is measured on REV's code and on this tree's, alternating for
`--rounds` rounds, each in a fresh process (REV checked out in a temporary git worktree); the medians and the ratios
baseline / this tree (per round and their median) are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from harness.api import Budget, TrainView
from harness.data.cards import data_root
from harness.data.interactions import TrainInteractions
from harness.data.protocols import is_labelled
from harness.engines.training import autocast
from harness.run.evaluate import plugin_kwargs
from harness.run.referee import prepare, resolve_device
from harness.run.spec import RunSpec
from harness.run.tracks import load_track
from harness.sid import semantic_ids

METHODS = {"sasrec": ("cpu-small", "scientific"), "argus": ("cpu-small", "scientific"),
           "tiger": ("cpu-small", "scientific"), "gr": ("cpu-small", "scientific"),
           "gr-resolved": ("cpu-small", "scientific"), "gryphon": ("cpu-small", "scientific"),
           "letter": ("cpu-small", "scientific"), "etegrec": ("cpu-small", "scientific"),
           "dig": ("cpu-labelled", "ml-100k")}
MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
           torch.ops.aten.baddbmm.default}


class _Captured(Exception):
    """Raised in place of the method's training loop: carries what one step needs."""

    def __init__(self, step, batches: list, per_epoch: int):
        self.step, self.batches, self.per_epoch = step, batches, per_epoch


class MatmulShapes(TorchDispatchMode):
    """FLOPs per (batch, m, k, n) of every matmul the step runs."""

    def __init__(self):
        super().__init__()
        self.flops: dict[tuple[int, int, int, int], int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            a, b = (args[1], args[2]) if func in (torch.ops.aten.addmm.default, torch.ops.aten.baddbmm.default) \
                else (args[0], args[1])
            batch = a.shape[0] if a.dim() == 3 else 1
            m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
            self.flops[(batch, m, k, n)] += 2 * batch * m * k * n
        return func(*args, **(kwargs or {}))


PRECISION = {"value": "fp32"}  # --precision: how the driven steps run their forward passes


def _loop_step(module, optimizer, loss_of, clip_norm):
    def step(batch):
        optimizer.zero_grad()
        with autocast(PRECISION["value"], next(module.parameters()).device):
            loss = loss_of(batch)
        loss.backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip_norm)
        optimizer.step()
    return step


def _capture_shared_loop(method, module, train, budget, optimizer, batches, loss_of, cfg, scheduler=None,
                         clip_norm=None, generators=()):
    epoch = list(batches())
    raise _Captured(_loop_step(module, optimizer, loss_of, clip_norm), epoch, len(epoch))


def _capture_etegrec_epoch(self, phase, align, samples, optimizer, generator, budget, step=0, scheduler=None):
    """ETEGRec trains in its own alternating loop: time its generator step (the tokenizer frozen, alignment on)."""
    users, hists, targets = samples
    epoch = list(torch.randperm(len(targets), generator=generator).split(self.config["batch_size"]))
    gen_opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.config["lr"])

    def step_fn(idx):
        self.parts.train()
        self.tokenizer.requires_grad_(False)
        try:
            with autocast(PRECISION["value"], self.device):
                loss = self.losses(users[idx], hists[idx], targets[idx], "generator", True)
            gen_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.parts.parameters(), 1.0)
            gen_opt.step()
        finally:
            self.tokenizer.requires_grad_(True)
    raise _Captured(step_fn, epoch, len(epoch))


def _patch_training_loops() -> None:
    import harness.engines.training as training
    original = training.train_with_validation
    for module in list(sys.modules.values()):
        if getattr(module, "train_with_validation", None) is original:
            module.train_with_validation = _capture_shared_loop
    from methods.etegrec import ETEGRec
    ETEGRec.train_epoch = _capture_etegrec_epoch


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, batch: int = 1, seconds: float = 0.3) -> float:
    """GFLOP/s of a [batch, m, k] @ [batch, k, n] product in `dtype`, best of repeated timings."""
    a = torch.randn(batch, m, k).to(dtype)
    b = torch.randn(batch, k, n).to(dtype)
    op = (lambda: torch.bmm(a, b)) if batch > 1 else (lambda: torch.mm(a[0], b[0]))
    for _ in range(3):
        op()
    best, spent = float("inf"), 0.0
    reps = max(1, int(2e8 // max(1, 2 * batch * m * k * n)))
    while spent < seconds:
        start = time.perf_counter()
        for _ in range(reps):
            op()
        took = (time.perf_counter() - start) / reps
        best, spent = min(best, took), spent + took * reps
    return 2 * batch * m * k * n / best / 1e9


def _view(prepared, spec: RunSpec, device: torch.device) -> TrainView:
    split, data = prepared.split, prepared.dataset
    labelled = is_labelled(split.protocol)
    return TrainView(split.train_sequences, data.n_items, data.items, data.text_fields, lambda m: {}, device,
                     spec.seed, Path("/tmp"), prepared.card.name,
                     exposures=split.train_exposures if labelled else None, users=data.users, protocol=split.protocol,
                     interactions=TrainInteractions.from_split(split, data.n_items), timed=data.timed,
                     sid_provider=semantic_ids)


def capture(spec: RunSpec, device: torch.device):
    """Run the method's fit up to its training loop; return (prepared, method, step, batches, per_epoch, setup_s)."""
    prepared = prepare(spec)
    method = prepared.method_cls(dict(prepared.config))
    view = _view(prepared, spec, device)
    start = time.perf_counter()
    try:
        method.fit(view, Budget(None, spec.max_epochs))
        raise RuntimeError(f"{spec.method}: fit returned without reaching a training loop this benchmark knows")
    except _Captured as captured:
        return (prepared, method, captured.step, captured.batches, captured.per_epoch,
                time.perf_counter() - start)


def measure(name: str, steps: int, valid_users: int) -> dict[str, Any]:
    track_name, dataset = METHODS[name]
    spec = RunSpec.for_track(load_track(track_name), name, dataset)
    prepared, method, step, batches, per_epoch, setup_s = capture(spec, resolve_device("cpu"))
    row: dict[str, Any] = {"method": name, "track": track_name, "dataset": dataset, "setup_s": round(setup_s, 1),
                           "batches_per_epoch": per_epoch}
    for batch in batches[:2]:  # warm-up
        step(batch)
    shapes = MatmulShapes()
    with FlopCounterMode(display=False) as flops, shapes:
        step(batches[2 % len(batches)])
    times = []
    for i in range(steps):
        begin = time.perf_counter()
        step(batches[(3 + i) % len(batches)])
        times.append(time.perf_counter() - begin)
    step_s = statistics.median(times)
    gflop = flops.get_total_flops() / 1e9
    top = sorted(shapes.flops.items(), key=lambda kv: -kv[1])[:3]
    share = sum(f for _, f in top) / max(1, sum(shapes.flops.values()))
    fp32 = [matmul_rate(m, k, n, torch.float32, b) for (b, m, k, n), _ in top]
    weights = [f for _, f in top]
    fp32_at_shapes = sum(w for w in weights) / sum(w / r for w, r in zip(weights, fp32)) if top else float("nan")
    row.update({
        "gflop_per_step": round(gflop, 3), "step_ms": round(1000 * step_s, 1), "gflops": round(gflop / step_s, 1),
        "top_shapes": [list(s) for s, _ in top], "top_shapes_flop_share": round(share, 3),
        "fp32_at_shapes": round(fp32_at_shapes, 1),
        "bf16_at_shapes": round(statistics.fmean(matmul_rate(m, k, n, torch.bfloat16, b) for (b, m, k, n), _ in top),
                                1) if top else None,
        "share_of_fp32": round(gflop / step_s / fp32_at_shapes, 3) if top else None,
        "epoch_s_at_step_rate": round(per_epoch * step_s, 1),
    })
    row.update(_validation_speed(method, prepared, valid_users))
    return row


def precision_ratio(name: str, steps: int, rounds: int) -> list[Any]:
    """One method's training step in fp32 and in bf16, the same batches alternating between them in one process
    (drifting load hits both alike): median step ms of each and the speed-up of bf16."""
    track_name, dataset = METHODS[name]
    spec = RunSpec.for_track(load_track(track_name), name, dataset)
    _, _, step, batches, _, _ = capture(spec, resolve_device("cpu"))
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for round_ in range(rounds):
        for precision in times:
            PRECISION["value"] = precision
            for batch in batches[:2]:  # warm-up in this precision
                step(batch)
            for i in range(steps):
                begin = time.perf_counter()
                step(batches[(2 + round_ * steps + i) % len(batches)])
                times[precision].append(time.perf_counter() - begin)
    fp32, bf16 = (1000 * statistics.median(times[p]) for p in ("fp32", "bf16"))
    return [name, dataset, round(fp32, 1), round(bf16, 1), round(fp32 / bf16, 2)]


def _validation_speed(method, prepared, users: int) -> dict[str, Any]:
    """Users/s of the run's own validation decoding on the first `users` validation users (the untrained model:
    decoding costs the same)."""
    split = prepared.split
    try:
        method.net.eval() if hasattr(method, "net") else None
        for module in ("model", "parts"):
            if hasattr(getattr(method, module, None), "eval"):
                getattr(method, module).eval()
        histories = split.valid.histories[:users]
        ids = split.valid.users[:users] if split.valid.users is not None else None
        exposures = split.valid.exposures[:users] if getattr(split.valid, "exposures", None) is not None else None
        kwargs = plugin_kwargs(method, ids, exposures)
        start = time.perf_counter()
        with torch.no_grad():
            if method.retrieves_by_recommend or not method.has_score():
                method.recommend(histories, 50, **kwargs)
            else:
                method.score(histories, None, **kwargs)
        return {"valid_users_per_s": round(len(histories) / (time.perf_counter() - start), 1)}
    except Exception as exc:  # a method that needs its trained state to decode
        return {"valid_users_per_s": None, "valid_note": f"{type(exc).__name__}: {exc}"[:80]}


def against_baseline(args) -> None:
    """Each method on REV's code then on this tree's, one fresh process each, and their ratios."""
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(here), "worktree", "add", "--detach", str(tree), args.baseline], check=True,
                       capture_output=True)
        try:
            table = []
            for name in args.methods.split(","):
                got = {"baseline": [], "this tree": []}
                for round_ in range(args.rounds):  # alternate, so drifting load hits both trees alike
                    for label, root in (("baseline", tree), ("this tree", here)):
                        print(f"measuring {name} on {label} (round {round_ + 1}) ...", file=sys.stderr, flush=True)
                        cmd = [sys.executable, str(Path(__file__).resolve()), "--methods", name, "--json", "--steps",
                               str(args.steps), "--threads", str(args.threads), "--precision", args.precision,
                               "--valid-users", str(args.valid_users)]
                        # both trees read this tree's data root (a worktree has no ../shared beside it)
                        env = {**os.environ, "PYTHONPATH": str(root), "HARNESS_DATA_DIR": str(data_root())}
                        out = subprocess.run(cmd, env=env, cwd=root, check=True, capture_output=True,
                                             text=True).stdout
                        got[label].append(json.loads(out)["rows"][0])
                median = lambda label, key: statistics.median(r[key] for r in got[label]) \
                    if all(r.get(key) for r in got[label]) else None
                ratios = [a["step_ms"] / b["step_ms"] for a, b in zip(got["baseline"], got["this tree"])]
                old_v, new_v = median("baseline", "valid_users_per_s"), median("this tree", "valid_users_per_s")
                table.append([name, median("baseline", "step_ms"), median("this tree", "step_ms"),
                              round(statistics.median(ratios), 2), " ".join(f"{r:.2f}" for r in ratios),
                              median("baseline", "share_of_fp32"), median("this tree", "share_of_fp32"), old_v, new_v,
                              round(new_v / old_v, 2) if old_v and new_v else None])
        finally:
            subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", str(tree)], capture_output=True)
    from tabulate import tabulate
    print(tabulate(table, headers=["method", f"step ms {args.baseline}", "step ms now", "speed-up (median)",
                                   "per round", "share of fp32 before", "share now", "valid users/s before", "now",
                                   "speed-up"]))
    print(f"{args.threads} thread(s), steps in {args.precision}; medians over {args.rounds} rounds of alternating fresh "
          f"processes on this machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the tracks pin 1)")
    parser.add_argument("--valid-users", type=int, default=256)
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16 (autocast forward passes, as --precision)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baseline", help="git revision to measure beside this tree (ratios printed)")
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline: alternating rounds per method")
    parser.add_argument("--compare-precisions", action="store_true",
                        help="time each method's step in fp32 and bf16 alternately in one process (--rounds rounds of "
                             "--steps steps each) and print the bf16 speed-up")
    args = parser.parse_args()
    if args.compare_precisions:
        torch.set_num_threads(args.threads)
        _patch_training_loops()
        from tabulate import tabulate
        table = [precision_ratio(name, args.steps, args.rounds) for name in args.methods.split(",")]
        print(tabulate(table, headers=["method", "dataset", "fp32 step ms", "bf16 step ms", "bf16 speed-up"]))
        print(f"{args.threads} thread(s); medians of {args.rounds} alternating rounds of {args.steps} steps per "
              f"precision; AMX: {Path('/proc/cpuinfo').exists() and 'amx_bf16' in Path('/proc/cpuinfo').read_text()}")
        return
    if args.baseline:
        against_baseline(args)
        return
    torch.set_num_threads(args.threads)
    PRECISION["value"] = args.precision
    _patch_training_loops()
    rows = []
    for name in args.methods.split(","):
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        rows.append(measure(name, args.steps, args.valid_users))
    big32 = matmul_rate(2048, 2048, 2048, torch.float32, seconds=1.0)
    big16 = matmul_rate(2048, 2048, 2048, torch.bfloat16, seconds=1.0)
    if args.json:
        print(json.dumps({"matmul_2048_fp32": round(big32, 1), "matmul_2048_bf16": round(big16, 1), "rows": rows},
                         indent=2))
        return
    from tabulate import tabulate
    columns = ["method", "dataset", "gflop_per_step", "step_ms", "gflops", "fp32_at_shapes", "share_of_fp32",
               "bf16_at_shapes", "batches_per_epoch", "epoch_s_at_step_rate", "valid_users_per_s"]
    print(tabulate([[r.get(c) for c in columns] for r in rows], headers=columns))
    print(f"matmul 2048^3 in this process: fp32 {big32:.1f} GFLOP/s, bf16 {big16:.1f} GFLOP/s "
          f"({args.threads} thread{'s' if args.threads > 1 else ''}); steps in {args.precision}")


if __name__ == "__main__":
    main()
