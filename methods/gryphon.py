"""Gryphon (item-level scoring for generative retrieval; `../papers/gryphon-item-level-scoring`).

Vanilla GR (residual k-means SIDs, colliding items share a SID) plus an Item-Level Scoring Module (ILSM).

§3 Architecture. The user's history is encoded once into encoder states H. The decoder generates SIDs from H; the
ILSM reuses the same H: an item query q_i from an item tower (item-id embedding; item features optional) attends
to H through one lightweight item-to-user cross-attention block, and an MLP head turns the result into a scalar
score s(u, i). Items that share a SID get different scores through their own queries.

§3.3 Training. L = L_gen + λ · L_item: L_gen is the teacher-forced SID cross-entropy; L_item is sampled softmax with
in-batch negatives and logQ correction over ILSM scores (`harness.nn.sampled_softmax`). Both share H.

§3.4 Inference. One encoder pass; beam search proposes the top-B SIDs (beam likelihood decides membership only);
each SID expands to its collision group; the ILSM scores the pool and the pool is ranked by that score.

§4.1.3 Parity. With `replace_decoder_block` the generator has one decoder block fewer than vanilla GR's, so the two
compare at about equal parameters and latency.

Table 2 (three views of the same beam pool) is in every record: SID-level recall (`sid_recall@k`), item-level recall
ranked by beam likelihood (`beam_ranked/recall@k`) and by the ILSM (the run's metrics); `harness run` prints it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import TopK, TrainView, register
from harness.engines.generative import GenerativeRetrieval
from harness.errors import ConfigError
from harness.features import item_features
from harness.nn.beam import beam_search
from harness.nn.item_tower import ItemTower
from harness.nn.sampled_softmax import NegativeSampler, sampled_softmax_loss
from harness.nn.attention import Attention, Dropout, PackedMemory
from harness.nn.transformer import ModelShape


class ItemLevelScorer(nn.Module):
    """ILSM: item query → one cross-attention block over the encoder states → MLP head → scalar per (user, item).
    Queries attend to the user only, never to each other, so an item's score does not depend on the pool."""

    def __init__(self, n_items: int, d_model: int, heads: int, d_head: int, d_ff: int, dropout: float,
                 features: np.ndarray | None = None):
        super().__init__()
        self.tower = ItemTower(n_items, d_model, features)
        self.norm_query = nn.LayerNorm(d_model)
        self.cross_attn = Attention(d_model, heads, d_head, dropout)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), Dropout(dropout), nn.Linear(d_ff, d_model))
        self.norm_out = nn.LayerNorm(d_model)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))

    def forward(self, memory: PackedMemory, items: torch.Tensor) -> torch.Tensor:
        """memory: the packed encoder states of U users; items [U, C] (per-user candidates) or [C] (shared) →
        scores [U, C]."""
        query = self.tower(items.clamp(min=0))
        if query.ndim == 2:
            query = query.expand(memory.packing.batch, -1, -1)
        x = query + self.cross_attn.cross(self.norm_query(query), self.cross_attn.memory_kv(memory))
        x = x + self.ff(self.norm_ff(x))
        return self.head(self.norm_out(x)).squeeze(-1)


@register
class Gryphon(GenerativeRetrieval):
    name = "gryphon"
    paper = "Gryphon: A Unified Architecture for Semantic-ID Generation and Item-Level Scoring in Industrial " \
            "Recommendations (2026)"
    retrieves_by_recommend = True  # retrieval = beam search + ILSM re-ranking; score() = the ILSM alone (for AUC)

    # --- §3 architecture ----------------------------------------------------------------------------------------
    def model_shape(self) -> ModelShape:
        shape = super().model_shape()
        if shape.arch != "encdec":
            raise ConfigError("gryphon needs arch=encdec: the item scorer reads the encoder states")
        if self.config["replace_decoder_block"]:
            if shape.dec_layers < 2:
                raise ConfigError("replace_decoder_block needs dec_layers >= 2 (one block becomes the ILSM)")
            shape = dataclasses.replace(shape, dec_layers=shape.dec_layers - 1)
        return shape

    def generators(self) -> list[torch.Generator]:
        return [self.sample_generator]

    def build_heads(self, train: TrainView, targets: torch.Tensor) -> nn.Module:
        cfg = self.config
        features = item_features(train, cfg["item_features"], cfg.get("item_features_options"))
        self.ilsm = ItemLevelScorer(train.n_items, cfg["d_model"], cfg["heads"], cfg["d_head"], cfg["ilsm_d_ff"],
                                    cfg["dropout"], features).to(self.device)
        # In-batch negatives are other samples' targets: Q(i) follows the items' frequency as targets.
        counts = np.bincount(targets.numpy(), minlength=train.n_items)
        self.sampler = NegativeSampler(counts, cfg["inbatch_negatives"], cfg["uniform_negatives"], self.device)
        self.sample_generator = torch.Generator().manual_seed(train.seed + 1)
        return nn.ModuleDict({"generator": self.model, "ilsm": self.ilsm})

    # --- §3.3 joint objective -----------------------------------------------------------------------------------
    def training_loss(self, users: torch.Tensor, hists: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        sids, users, targets = self.history_sids(hists), users.to(self.device), targets.to(self.device)
        memory = self.model.memory(sids, users)  # shared by both losses
        target_sids = self.item_sids[targets]
        logits = self.model(sids, users, target_sids, encoded=memory)
        loss_gen = sum(F.cross_entropy(lg, target_sids[:, level]) for level, lg in enumerate(logits))
        negatives = self.sampler.sample(targets, self.sample_generator)
        pos = self.ilsm(memory, targets[:, None]).squeeze(1)
        neg = self.ilsm(memory, negatives)
        log_q = self.sampler.log_q if cfg["logq_correction"] else None
        loss_item = sampled_softmax_loss(pos, neg, targets, negatives, log_q, cfg["temperature"])
        return loss_gen + cfg["item_loss_weight"] * loss_item

    # --- §3.4 inference -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def recommend(self, histories: list[np.ndarray], k: int, users: np.ndarray | None = None) -> TopK:
        self.model.eval()
        self.ilsm.eval()
        beam = max(int(self.config["beam"]), k)
        # Beam rows cost memory per user: fewer users per chunk as the beam grows (B = 1000 must fit).
        chunk = max(1, int(self.config["decode_batch"]) * 50 // max(beam, 50))
        user_tensor = None if users is None else torch.as_tensor(np.asarray(users, dtype=np.int64))
        parts = []
        for start in range(0, len(histories), chunk):
            sids = self.history_sids(self._padded(histories[start:start + chunk]))
            u = None if user_tensor is None else user_tensor[start:start + chunk].to(self.device)
            memory = self.model.memory(sids, u)  # the one encoder pass
            beams, beam_scores = beam_search(self.model, sids, u, beam, self.trie, encoded=memory)
            parts.append(self._rank_pool(memory, beams, beam_scores, k))
        return TopK(items=torch.cat([p.items for p in parts]), scores=torch.cat([p.scores for p in parts]),
                    extras={key: torch.cat([p.extras[key] for p in parts]) for key in parts[0].extras})

    def _rank_pool(self, memory, beams, beam_scores, k: int) -> TopK:
        groups = self.resolver.groups(beams, beam_scores)
        sizes = torch.where(groups >= 0, self.resolver.sizes[groups.clamp(min=0)], torch.zeros_like(groups))
        pool_size = max(1, int(sizes.sum(1).max()))
        # The pool in beam order (each SID's whole collision group, sharing its beam score): vanilla GR's ranking.
        pool, pool_beam_scores = self.resolver.items(groups, beam_scores, pool_size)
        scores = self.ilsm(memory, pool.to(self.device)).float().cpu()
        scores = scores.masked_fill(pool < 0, float("-inf"))
        top = scores.topk(min(k, pool_size), dim=1)
        items = pool.gather(1, top.indices)
        items = torch.where(torch.isfinite(top.values), items, torch.full_like(items, -1))
        width = min(k, pool_size)
        return TopK(items=items, scores=top.values, extras={
            "beam_groups": groups, "beam_group_sizes": sizes,
            "alt:beam:items": pool[:, :width], "alt:beam:scores": pool_beam_scores[:, :width]})

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], items: torch.Tensor | None = None,
              users: np.ndarray | None = None) -> torch.Tensor:
        """The ILSM's score of items (all, or `items`) for each history: pointwise, so AUC is defined for Gryphon."""
        self.model.eval()
        self.ilsm.eval()
        candidates = torch.arange(len(self.item_sids)) if items is None else items.long()
        user_tensor = None if users is None else torch.as_tensor(np.asarray(users, dtype=np.int64))
        chunk = max(1, int(self.config["decode_batch"]) // 4)
        parts = []
        for start in range(0, len(histories), chunk):
            sids = self.history_sids(self._padded(histories[start:start + chunk]))
            u = None if user_tensor is None else user_tensor[start:start + chunk].to(self.device)
            memory = self.model.memory(sids, u)
            parts.append(self.ilsm(memory, candidates.to(self.device)).float().cpu())
        return torch.cat(parts) if parts else torch.zeros(0, len(candidates))

    def diagnostics(self):
        info = super().diagnostics()
        info["decoder_blocks"] = len(self.model.decoder) if hasattr(self, "model") else None
        info["ilsm_params"] = sum(p.numel() for p in self.ilsm.parameters()) if hasattr(self, "ilsm") else None
        return info
