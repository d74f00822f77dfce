"""The generative-retrieval engine every SID method stands on: SIDs from the provider, a seq2seq generator trained
with teacher-forced next-SID cross-entropy, batched beam search, and resolution of generated SIDs to items.

A method plugin subclasses `GenerativeRetrieval` and changes only what its paper changes (tokenizer, collision
strategy, user tokens, extra losses or scoring). Every GRID ablation is a config value:
tokenizer / levels / width (Tables 1-2), arch encdec | deconly (Table 5), user_buckets (Table 4), sliding_window
(Table 6), collisions dedup-token | none | random-pick (Table 7), constrained beam on/off (Table 8).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.api import Budget, Method, TopK, TrainView
from harness.engines.training import lr_multiplier, make_optimizer, train_with_validation
from harness.nn.beam import beam_search
from harness.nn.transformer import ModelShape, SIDTransformer
from harness.sid import PrefixTrie, SIDTable, sid_report


def training_samples(sequences: list[np.ndarray], max_history: int, sliding_window: bool):
    """(user, history items [S, N] left-padded with -1, target [S]). With the sliding window every position of every
    training sequence is a target (GRID §4.2); without it only each sequence's last item."""
    users, hists, targets = [], [], []
    for user, seq in enumerate(sequences):
        if len(seq) < 2:
            continue
        positions = range(1, len(seq)) if sliding_window else [len(seq) - 1]
        for t in positions:
            hist = seq[max(0, t - max_history):t]
            row = np.full(max_history, -1, dtype=np.int64)
            row[max_history - len(hist):] = hist
            users.append(user)
            hists.append(row)
            targets.append(seq[t])
    return (torch.as_tensor(np.array(users, dtype=np.int64)), torch.as_tensor(np.array(hists)),
            torch.as_tensor(np.array(targets, dtype=np.int64)))


class SIDResolver:
    """Generated SIDs → catalogue items under the table's collision strategy."""

    def __init__(self, table: SIDTable, device: torch.device, widths: Sequence[int] | None = None):
        """SIDs are keyed in mixed radix over `widths`, the widths the generator decodes (default the table's), each
        at least the table's: a decoded code past its level's table width (a counter beyond the largest collision
        group) then has a key of its own and finds no item, instead of carrying into the level above."""
        widths = torch.as_tensor(table.widths if widths is None else
                                 [max(int(a), int(b)) for a, b in zip(table.widths, widths)], dtype=torch.int64)
        self.radix = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.int64), widths.flip(0)[:-1]]), 0).flip(0)
        keys = (torch.as_tensor(table.sids) * self.radix).sum(1)
        self.sorted_keys, self.order = keys.sort()
        self.sizes = torch.as_tensor(np.diff(table.members_offsets))
        self.offsets = torch.as_tensor(table.members_offsets[:-1])
        self.members = torch.as_tensor(table.members)
        self.pick = None if table.pick is None else torch.as_tensor(table.pick)
        self.expand_groups = table.strategy == "none"

    def groups(self, sids: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
        """[B, beam, L] → SID group id [B, beam]: -1 where no item has that SID, -2 for an empty beam slot
        (score -inf: constrained search ran out of valid SIDs before filling the beam)."""
        keys = (sids.cpu() * self.radix).sum(-1)
        pos = torch.searchsorted(self.sorted_keys, keys).clamp(max=len(self.sorted_keys) - 1)
        found = self.sorted_keys[pos] == keys
        groups = torch.where(found, self.order[pos], torch.full_like(pos, -1))
        if scores is not None:
            groups = groups.masked_fill(torch.isneginf(scores.cpu()), -2)
        return groups

    def items(self, groups: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items: each valid SID in beam order contributes its item (dedup / random pick) or its whole
        collision group (vanilla GR) until k items; items inherit their SID's beam score."""
        batch, beam = groups.shape
        valid = groups >= 0
        safe = groups.clamp(min=0)
        if not self.expand_groups:
            item = self.members[self.offsets[safe]] if self.pick is None else self.pick[safe]
            item = torch.where(valid, item, torch.full_like(item, -1))
            score = torch.where(valid, scores.cpu(), torch.full_like(scores.cpu(), float("-inf")))
            keep = valid.long().argsort(dim=1, descending=True, stable=True)[:, :k]  # valid SIDs first, in order
            return item.gather(1, keep), score.gather(1, keep)
        sizes = torch.where(valid, self.sizes[safe], torch.zeros_like(safe))
        flat_sizes = sizes.reshape(-1)
        slot = torch.repeat_interleave(torch.arange(batch * beam), flat_sizes)
        within = torch.arange(len(slot)) - torch.repeat_interleave(flat_sizes.cumsum(0) - flat_sizes, flat_sizes)
        item = self.members[self.offsets[safe.reshape(-1)[slot]] + within]
        user = slot // beam
        start = torch.repeat_interleave((sizes.sum(1).cumsum(0) - sizes.sum(1)), sizes.sum(1))
        rank = torch.arange(len(slot)) - start
        keep = rank < k
        out_items = torch.full((batch, k), -1, dtype=torch.int64)
        out_scores = torch.full((batch, k), float("-inf"))
        out_items[user[keep], rank[keep]] = item[keep]
        out_scores[user[keep], rank[keep]] = scores.cpu().reshape(-1)[slot[keep]]
        return out_items, out_scores


class GenerativeRetrieval(Method):
    """Shared fit / recommend of SID generators. Subclasses set name, paper and the YAML config beside them."""

    needs = ("item_text", "sids")
    uses_user_ids = True

    # --- SIDs ---------------------------------------------------------------------------------------------------
    def build_sids(self, train: TrainView) -> SIDTable:
        cfg = self.config
        table, self.sid_provenance = train.semantic_ids(
            embedder=cfg["embedder"], embedder_options=cfg.get("embedder_options") or {},
            tokenizer=cfg["tokenizer"], collisions=cfg["collisions"], seed=cfg["sid_seed"],
            tokenizer_options={"levels": cfg["levels"], "width": cfg["width"], **self.tokenizer_options()},
            collaborative_embedder=cfg.get("collaborative_embedder", "sasrec-cf"),
            collaborative_options=cfg.get("collaborative_options") or {})
        return table

    def tokenizer_options(self) -> dict[str, Any]:
        return dict(self.config.get("tokenizer_options") or {})

    # --- training -----------------------------------------------------------------------------------------------
    def fit(self, train: TrainView, budget: Budget) -> None:
        cfg = self.config
        self.device = train.device
        self.use_table(self.build_sids(train))
        self.interactions = train.interactions()  # for the tokenizer report stored in the record
        self.model = SIDTransformer(self.model_shape()).to(self.device)
        users, hists, targets = training_samples(train.sequences, cfg["max_history"], cfg["sliding_window"])
        trained = self.build_heads(train, targets)
        optimizer = make_optimizer(cfg["optimizer"], trained.parameters(), cfg["lr"], cfg["weight_decay"])
        # linear-warmup (the default where a config names none) or rsqrt (TIGER's); see lr_multiplier
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(cfg.get("lr_schedule", "linear-warmup"), cfg["warmup_steps"]))
        generator = torch.Generator().manual_seed(train.seed)
        train_with_validation(
            self, trained, train, budget, optimizer,
            lambda: torch.randperm(len(targets), generator=generator).split(cfg["batch_size"]),
            lambda idx: self.training_loss(users[idx], hists[idx], targets[idx]), cfg,
            scheduler=schedule, clip_norm=1.0, generators=[generator, *self.generators()])

    def use_table(self, table: SIDTable, widths: list[int] | None = None) -> None:
        """Adopt a SID table: item → SID, item → group, the validity trie (over `widths`, default the table's) and
        the resolver. Called again by methods whose codes change during training."""
        self.table = table
        self.item_group = table.group_of  # item → SID group (for SID-level diagnostics)
        self.item_sids = torch.as_tensor(table.codes, device=self.device)
        widths = list(table.widths) if widths is None else widths
        self.trie = PrefixTrie(table.codes, widths, self.device) if self.config["constrained"] else None
        self.resolver = SIDResolver(table, self.device, widths)

    def model_shape(self) -> ModelShape:
        cfg = self.config
        return ModelShape(widths=list(self.table.widths), user_buckets=cfg["user_buckets"], d_model=cfg["d_model"],
                          heads=cfg["heads"], d_head=cfg["d_head"], d_ff=cfg["d_ff"], enc_layers=cfg["enc_layers"],
                          dec_layers=cfg["dec_layers"], dropout=cfg["dropout"], max_history=cfg["max_history"],
                          arch=cfg["arch"])

    def build_heads(self, train: TrainView, targets: torch.Tensor) -> torch.nn.Module:
        """Hook for methods that train more than the generator (Gryphon's item scorer): returns the module whose
        parameters are optimised and whose best validation state is kept."""
        return self.model

    def generators(self) -> list[torch.Generator]:
        """Random streams of the method's own that training draws from (a checkpoint keeps their state)."""
        return []

    def history_sids(self, hists: torch.Tensor) -> torch.Tensor:
        """Item ids [B, N] (-1 = padding) → SIDs [B, N, L] (-1 rows for padding)."""
        hists = hists.to(self.device)
        sids = self.item_sids[hists.clamp(min=0)]
        return torch.where((hists >= 0)[..., None], sids, torch.full_like(sids, -1))

    def training_loss(self, users: torch.Tensor, hists: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of the target's SID, summed over levels (averaged over the batch)."""
        target_sids = self.item_sids[targets.to(self.device)]
        logits = self.model(self.history_sids(hists), users.to(self.device), target_sids)
        return sum(F.cross_entropy(lg, target_sids[:, level]) for level, lg in enumerate(logits))

    # --- inference ----------------------------------------------------------------------------------------------
    def _padded(self, histories: list[np.ndarray]) -> torch.Tensor:
        n = self.config["max_history"]
        out = torch.full((len(histories), n), -1, dtype=torch.long)
        for row, hist in enumerate(histories):
            tail = np.asarray(hist[-n:], dtype=np.int64)
            if len(tail):
                out[row, n - len(tail):] = torch.tensor(tail)  # a copy: views may be read-only
        return out

    def decode_order(self, histories: list[np.ndarray]) -> np.ndarray:
        """Users in the order the packed encoder sorts them (kept history length; an empty history keeps all its
        padding, so it comes last): a chunk of similar lengths packs into few attention runs and needs no row
        permutation. Each user's beams depend on that user only, so the order changes no result."""
        n = self.config["max_history"]
        return np.argsort([min(len(h), n) or n + 1 for h in histories], kind="stable")

    @torch.no_grad()
    def generate(self, histories: list[np.ndarray], users: np.ndarray | None, beam: int):
        """Beam search in chunks of users: SIDs [B, beam, L] and log-probabilities [B, beam]."""
        self.model.eval()
        chunk = max(1, int(self.config["decode_batch"]))
        order = self.decode_order(histories)
        all_sids, all_scores = [], []
        user_tensor = None if users is None else torch.as_tensor(np.asarray(users, dtype=np.int64))
        for start in range(0, len(histories), chunk):
            rows = order[start:start + chunk]
            hist = self.history_sids(self._padded([histories[i] for i in rows]))
            u = None if user_tensor is None else user_tensor[torch.as_tensor(rows)].to(self.device)
            sids, scores = beam_search(self.model, hist, u, beam, self.trie)
            all_sids.append(sids.cpu())
            all_scores.append(scores.cpu())
        inverse = torch.as_tensor(np.argsort(order))
        return torch.cat(all_sids)[inverse], torch.cat(all_scores)[inverse]

    def recommend(self, histories: list[np.ndarray], k: int, users: np.ndarray | None = None) -> TopK:
        beam = max(int(self.config["beam"]), k)
        sids, scores = self.generate(histories, users, beam)
        groups = self.resolver.groups(sids, scores)
        items, item_scores = self.resolver.items(groups, scores, k)
        sizes = torch.where(groups >= 0, self.resolver.sizes[groups.clamp(min=0)], torch.zeros_like(groups))
        return TopK(items=items, scores=item_scores, extras={"beam_groups": groups, "beam_group_sizes": sizes})

    def tokenizer_report(self) -> dict[str, Any] | None:
        """`harness sids report`'s figures for the SIDs this run used (before any dedup / counter token)."""
        if not hasattr(self, "table") or not hasattr(self, "interactions"):
            return None
        levels = len(self.table.widths) - (1 if self.table.strategy == "dedup-token" else 0)
        return sid_report(self.table.codes[:, :levels], list(self.table.widths[:levels]),
                          self.table.info.get("recon_error"), self.interactions)

    def diagnostics(self) -> dict[str, Any]:
        info = dict(self.table.info) if hasattr(self, "table") else {}
        info["tokenizer_report"] = self.tokenizer_report()
        info["sid_levels"] = list(self.table.widths) if hasattr(self, "table") else None
        info["sids"] = getattr(self, "sid_provenance", None)
        info["constrained"] = bool(self.config.get("constrained"))
        return info
