"""Our TIGER (`tiger` plugin on harness/nn) vs cornac's TIGER (`cornac.models.TIGER`), side by side in one process.

Measures (a) training throughput in samples/s and (b) decoding throughput in users/s at beam 20, constrained and free,
and prints both with the ratios ours / cornac. Usage:

    pip install -e '.[bench]'                 # cornac==3.0.1 (its TIGER also needs `transformers`, e.g. the text extra)
    python benchmarks/tiger_vs_cornac.py --threads 1     # scientific, paper-size model, ~5-8 minutes on 2 CPU cores
    python benchmarks/tiger_vs_cornac.py --dataset synthetic --threads 4 --repeats 5

Without cornac installed only our numbers are printed, with a note saying why.

What is held equal (the fair part):
- Architecture: d_model 128, 4 + 4 layers, 6 heads x 64, MLP 1024, dropout 0.1 (tiger.yaml's paper sizes; any
  `--set key=value` of ours is mirrored where cornac has the parameter), no user tokens (cornac has none, so ours runs
  with user_buckets=0), max history 20 items.
- SIDs: ours come from the harness SID provider with tiger.yaml's settings (MiniLM text embeddings, RQ-VAE 3 x 256,
  dedup token, from the cache when present). Cornac is handed the same 3-level codes in place of its own tokenizer
  (its `fit` minus the tokenizer step: `_build_semantic_ids(codes)` then `_fit_seq2seq`); it appends the dedup level
  itself, and the script checks that its 4-level SID table equals ours before measuring.
- Training samples: the same users' training sequences (the first users of the split, the last one truncated so there
  are exactly (warm-up + timed) x batch samples), every position a target with the last 20 items as history (our
  sliding window = cornac's `session_seq_iter`). Same batch size, AdamW with the same lr and weight decay, constant lr.
- Each implementation runs its own, unmodified training loop for one epoch over that subset (ours: `fit()` with
  validation off; cornac: `_fit_seq2seq`). A global forward pre-hook stamps the start of every training step, so model
  construction and the first `--warmup` steps are excluded; throughput = timed samples / time from the first timed
  step to the end of the epoch. Median over `--repeats` rounds, run alternately (ours, cornac, ours, ...).
- Decoding: the test histories of the same users, beam 20, end to end to ranked items (ours: `recommend(k=20)`
  with SID resolution; cornac: `score()`, its per-user beam search plus the SID-to-item map). One warm-up call first;
  median users/s over `--repeats` rounds.
- Same process, same `torch.set_num_threads`, CPU, float32. Every figure is given per wall second (throughput) and
  per CPU second of this process (work): on a shared machine other processes move the first, hardly the second
  (with one thread the CPU-second figure is the wall throughput of a quiet machine; with several, spin-waiting
  counts as CPU time).

What differs (by design of each implementation, reported, not equalised):
- Cornac has only constrained beam search (its trie masks every level), so its one decoding number is set against
  both of our modes. It decodes one user at a time, re-running the decoder over the whole prefix at every level
  (no KV cache), and builds the mask in a Python loop over beams; ours decodes `decode_batch` users at once (128 by
  default) with a decoder KV cache and cross-attention keys/values computed once per user.
- Padding: both left-pad the history to 20 items (80 tokens), but most of it is padding (scientific: 19% real
  tokens). Cornac's T5 encoder and cross-attention projections run over all 80 positions; ours run over the real
  tokens only (users grouped by history length, no mask needed; the same outputs to float rounding).
- Transformer details: cornac uses Hugging Face's T5Stack (RMSNorm, relative position buckets, ReLU MLP without
  biases); ours is a pre-LayerNorm T5-style stack with learned position and level embeddings and a GELU MLP with
  biases. Parameter counts are printed; they differ by the embedding tables and biases only.
- Ours clips gradients at norm 1 (as in `fit`); cornac does not. Ours draws batches from a global shuffle of samples
  that are built once per fit; cornac shuffles sessions and builds its batches in Python every epoch (counted).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness import registry
from harness.api import Budget, TrainView
from harness.config import merge_config
from harness.data import leave_one_out, load_card, load_dataset
from harness.data.interactions import TrainInteractions
from harness.sid import semantic_ids


def now() -> tuple[float, float]:
    """(wall clock, this process's CPU time): on a shared machine the CPU time is what contention barely moves."""
    return time.perf_counter(), time.process_time()


class StepClock:
    """Stamps the start of every forward call of the given module classes (training steps), while enabled."""

    def __init__(self):
        self.types: tuple[type, ...] = ()
        self.stamps: list[tuple[float, float]] = []
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if self.types and isinstance(module, self.types):
            self.stamps.append(now())

    def watch(self, *types: type) -> None:
        self.types, self.stamps = types, []

    def stop(self) -> list[tuple[float, float]]:
        self.types = ()
        return self.stamps


def subset(sequences: list[np.ndarray], n_samples: int) -> tuple[list[int], list[np.ndarray]]:
    """The first users whose training sequences give exactly `n_samples` next-item samples (last one truncated)."""
    users, seqs, total = [], [], 0
    for user, seq in enumerate(sequences):
        if len(seq) < 2:
            continue
        take = min(len(seq) - 1, n_samples - total)
        users.append(user)
        seqs.append(seq[:take + 1])
        total += take
        if total == n_samples:
            return users, seqs
    raise SystemExit(f"the dataset has only {total} training samples; lower --steps/--warmup/--batch")


def throughput(stamps, end, warmup: int, batch: int) -> tuple[float, float]:
    """Samples per wall second and per CPU second from the first timed step to the end of the epoch."""
    timed = (len(stamps) - warmup) * batch
    return timed / (end[0] - stamps[warmup][0]), timed / (end[1] - stamps[warmup][1])


def rate(count: int, start: tuple[float, float]) -> tuple[float, float]:
    end = now()
    return count / (end[0] - start[0]), count / (end[1] - start[1])


# --- ours -------------------------------------------------------------------------------------------------------
def ours_train(cls, cfg, dataset, split, seqs, clock):
    from harness.nn.transformer import SIDTransformer
    view = TrainView(sequences=seqs, n_items=dataset.n_items, items=dataset.items, text_fields=dataset.text_fields,
                     # validation off: the loop still judges its last state once, which then is the one kept
                     validate=lambda method: {cfg["valid_metric"]: 0.0}, device=torch.device("cpu"), seed=0,
                     work_dir=Path(tempfile.gettempdir()), dataset=dataset.name,
                     interactions=TrainInteractions.from_split(split, dataset.n_items), sid_provider=semantic_ids)
    method = cls(cfg)
    torch.manual_seed(0)
    clock.watch(SIDTransformer)
    method.fit(view, Budget(None, 1))
    end = now()
    return method, clock.stop(), end


def ours_decode(method, histories, users, beam, constrained: bool):
    trie = method.trie
    if not constrained:
        method.trie = None  # what `constrained: false` does in fit
    try:
        start = now()
        method.recommend(histories, k=beam, users=users)
        return rate(len(histories), start)
    finally:
        method.trie = trie


# --- cornac -----------------------------------------------------------------------------------------------------
def cornac_model(cfg, n_items, seqs, codes, lr, weight_decay):
    from cornac.data import SequentialDataset
    from cornac.models import TIGER
    from cornac.models.recommender import NextItemRecommender
    rows = [(f"s{i}", int(item), t) for i, seq in enumerate(seqs) for t, item in enumerate(seq)]
    train_set = SequentialDataset.build(rows, fmt="SIT", global_iid_map={i: i for i in range(n_items)}, seed=0)
    model = TIGER(rqvae_num_levels=codes.shape[1] - 1, rqvae_codebook_size=int(codes[:, :-1].max()) + 1,
                  d_model=cfg["d_model"], d_ff=cfg["d_ff"], num_heads=cfg["heads"], d_kv=cfg["d_head"],
                  num_enc_layers=cfg["enc_layers"], num_dec_layers=cfg["dec_layers"], dropout=cfg["dropout"],
                  max_len=cfg["max_history"], n_epochs=1, learning_rate=lr, weight_decay=weight_decay,
                  batch_size=cfg["batch_size"], lr_schedule="constant", n_beams=cfg["beam"], device="cpu", seed=0)
    NextItemRecommender.fit(model, train_set)  # TIGER.fit without its tokenizer: the SIDs are ours
    model.device_ = "cpu"
    model._build_semantic_ids(codes[:, :-1])
    if not np.array_equal(model.sid_table, codes):
        raise SystemExit("cornac's SID table differs from ours; the comparison would not be on the same SIDs")
    return model


def cornac_train(model, clock):
    from cornac.models.tiger.tiger import TIGERSeq2Seq
    torch.manual_seed(0)
    clock.watch(TIGERSeq2Seq)
    model._fit_seq2seq(torch, None)
    end = now()
    stamps = clock.stop()
    model.model.to("cpu").eval()  # as the end of TIGER.fit
    return stamps, end


def cornac_decode(model, histories, users):
    start = now()
    for user, hist in zip(users, histories):
        model.score(int(user), [int(i) for i in hist])
    return rate(len(histories), start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scientific")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="training steps excluded from timing")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-users", type=int, default=256, help="users per decoding round (ours)")
    parser.add_argument("--cornac-decode-users", type=int, default=48, help="users per decoding round (cornac)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override our tiger config (e.g. d_model=64); mirrored to cornac where it applies")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import cornac
        import cornac.models.tiger.tiger  # noqa: F401  (needs transformers)
        cornac_version, skip = cornac.__version__, None
    except ImportError as exc:
        cornac_version, skip = None, f"cornac's TIGER is not importable ({exc}); pip install -e '.[bench]'"

    import yaml
    cls = registry.get("tiger")
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = merge_config(cls.default_config, {"user_buckets": 0, "beam": args.beam, "batch_size": args.batch,
                                            "epochs": 1, "eval_every": 10 ** 9, "optimizer": "adamw",
                                            "lr": args.lr, "weight_decay": args.weight_decay, "warmup_steps": 1,
                                            **overrides}, "tiger", getattr(cls, "recipes", None))
    card = load_card(args.dataset)
    dataset = load_dataset(card)
    split = leave_one_out(dataset, card.protocol)
    n_samples = (args.warmup + args.steps) * args.batch
    users, seqs = subset(split.train_sequences, n_samples)
    test_index = {u: i for i, u in enumerate(split.test.users)}
    eval_users = np.array([u for u in users if u in test_index] or split.test.users[:1], dtype=np.int64)
    eval_users = np.resize(eval_users, max(args.decode_users, args.cornac_decode_users))  # repeat users if few
    histories = [split.test.histories[test_index[u]] for u in eval_users]

    ours_tp, cornac_tp, clock = [], [], StepClock()
    method = model = None
    print(f"{args.dataset}: {len(seqs)} users, {n_samples} training samples, batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps x {args.repeats} rounds; torch threads {args.threads}",
          flush=True)
    for round_ in range(args.repeats):
        method, stamps, end = ours_train(cls, cfg, dataset, split, seqs, clock)
        ours_tp.append(throughput(stamps, end, args.warmup, args.batch))
        if round_ == 0:
            codes = method.table.codes
            print(f"SIDs: {codes.shape[1]} levels, widths {list(method.table.widths)}, "
                  f"{method.table.info.get('collision_groups')} collision groups", flush=True)
        if skip is None:
            model = cornac_model(cfg, dataset.n_items, seqs, codes, args.lr, args.weight_decay)
            stamps, end = cornac_train(model, clock)
            cornac_tp.append(throughput(stamps, end, args.warmup, args.batch))
        print(f"  train round {round_ + 1} (wall / CPU s): ours {ours_tp[-1][0]:.1f} / {ours_tp[-1][1]:.1f} samples/s"
              + (f", cornac {cornac_tp[-1][0]:.1f} / {cornac_tp[-1][1]:.1f}" if cornac_tp else ""), flush=True)

    decode = {"constrained": [], "free": [], "cornac": []}
    ours_users, c_users = eval_users[:args.decode_users], eval_users[:args.cornac_decode_users]
    ours_hist, c_hist = histories[:args.decode_users], histories[:args.cornac_decode_users]
    ours_decode(method, ours_hist[:8], ours_users[:8], args.beam, True)  # warm-up
    ours_decode(method, ours_hist[:8], ours_users[:8], args.beam, False)
    if model is not None:
        cornac_decode(model, c_hist[:4], c_users[:4])
    for round_ in range(args.repeats):
        decode["constrained"].append(ours_decode(method, ours_hist, ours_users, args.beam, True))
        decode["free"].append(ours_decode(method, ours_hist, ours_users, args.beam, False))
        if model is not None:
            decode["cornac"].append(cornac_decode(model, c_hist, c_users))
        print(f"  decode round {round_ + 1} (wall / CPU s): " + ", ".join(
            f"{k} {v[-1][0]:.1f} / {v[-1][1]:.1f} users/s" for k, v in decode.items() if v), flush=True)

    med = {k: tuple(statistics.median(x[i] for x in v) for i in (0, 1)) if v else None for k, v in
           {"train": ours_tp, "cornac_train": cornac_tp, **decode}.items()}
    ours_params = sum(p.numel() for p in method.model.parameters())
    print()
    print(f"torch {torch.__version__}, {args.threads} threads; cornac {cornac_version or 'not installed'}; "
          f"model d_model {cfg['d_model']}, {cfg['enc_layers']}+{cfg['dec_layers']} layers, "
          f"{cfg['heads']} heads x {cfg['d_head']}, MLP {cfg['d_ff']}, dropout {cfg['dropout']}; "
          f"params ours {ours_params:,}" + (f", cornac {sum(p.numel() for p in model.model.parameters()):,}"
                                              if model is not None else ""))
    print(f"medians of {args.repeats} rounds; decoding: beam {args.beam}, ours {len(ours_hist)} users per round in "
          f"batches of {cfg['decode_batch']}" + (f", cornac {len(c_hist)} users per round one at a time"
                                                 if model is not None else ""))
    rows = [("training (samples/s)", med["train"], med["cornac_train"]),
            ("decoding constrained (users/s)", med["constrained"], med["cornac"]),
            ("decoding free (users/s)", med["free"], med["cornac"])]
    print("per wall second (throughput here, now) and per CPU second of this process (the work each costs; "
          "what contention from other processes barely moves)")
    print(f"{'measure':<32}{'ours':>9}{'cornac':>9}{'ours/cornac':>13}{'ours':>11}{'cornac':>9}{'ours/cornac':>13}")
    print(f"{'':<32}{'--------- wall ----------':>31}{'---------- CPU ----------':>33}")
    for name, ours, theirs in rows:
        cells = ""
        for i in (0, 1):
            ratio = f"{ours[i] / theirs[i]:.2f}x" if theirs else "-"
            cells += f"{ours[i]:>{9 if i == 0 else 11}.1f}{(f'{theirs[i]:.1f}' if theirs else '-'):>9}{ratio:>13}"
        print(f"{name:<32}{cells}")
    if skip:
        print(f"note: {skip}")
    else:
        print("note: cornac has no free (unconstrained) decoding; both of our modes are compared with its "
              "constrained beam search")


if __name__ == "__main__":
    main()
