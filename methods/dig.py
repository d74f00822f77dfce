"""DIG (Wang, 2026): Discrimination Is Generation — a ranker with the tokenizer inside it becomes a retriever.

Feature assignment (Table 1):
- Type I, item-side static features x_v^s (item text embedding + category multi-hot; optionally an item-id embedding,
  our addition for small catalogues) → VQ encoder → e_v → residual codes s_1..s_L (the SID);
- Type II, request features: the user's profile and exposure history (DIN target attention inside the Mixer);
- Type III, u2i cross features c_{u,v} (`harness.features.cross`, prefix-accumulated): full in the ranking path;
  in the retrieval path replaced by u2t^(l)(u), the mean of c_{u,·} over the user's batch rows whose items share the
  SID prefix (eq. 13, training; `u2t_teacher: batch-mean` pools every user's rows instead), or by
  MLP_u2t^(l)([e_u; e_sid^(1:l)]) distilled from it (inference).

Tokenizer (§3.2): codebooks address (EMA, argmin), SID embeddings express (learned); a balanced k-means tree gives
the starting codes (zero collisions) and its per-prefix means the codebooks, so an argmin on unchanged embeddings
returns the tree's codes; codes are re-assigned by argmin at each epoch start (not in `fixed_sids`).
Our schedule departs from per-step assignment: a per-epoch table keeps SIDs stable within an epoch and makes the
zero-collision start a checkable state.

Training (§3.3): L = L_rank + w·L_recall + λ1 L_commit + λ2 L_sem + λ3 L_u2t. L_rank is BCE on real exposures;
L_recall is layer-wise BCE on SID prefixes over the exposures plus uniformly sampled items labelled 0 (retrieval must
also reject items nobody showed); `recall_layers: last` supervises only l = L (Ablation 4); `recall_loss_weight: 0`
is the paper's Base.

Inference (§3.4): layer-wise beam search scored by the shared Mixer with MLP_u2t outputs; the SIDs found expand to
their items, which the ranking path (full u2i features) then orders. AUC is reported for both paths (Table 4).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Budget, ExposureHistory, Method, TopK, TrainView, register
from harness.engines.training import train_with_validation
from harness.errors import ConfigError
from harness.features import embed_items
from harness.features.cross import (AFTER_ALL, CROSS_FEATURES, ItemHistory, candidate_queries, cross_features,
                                    exposures_from_sequences, feature_priors)
from harness.nn.ranker import Mixer
from harness.sid.ema_rq import AddressingQuantizer
from harness.sid.tokenizers import make_tokenizer

N_CROSS = len(CROSS_FEATURES)
U2T_TEACHERS = ("per-user", "batch-mean")
ITEM_COLUMNS = slice(6, 8)  # the item-level cross features (popularity and like rate so far)


class DIGNet(nn.Module):
    def __init__(self, static: torch.Tensor, n_items: int, user_cards: list[int], cfg: dict[str, Any]):
        super().__init__()
        d, hidden, levels, width = cfg["dim"], cfg["hidden"], cfg["levels"], cfg["width"]
        self.register_buffer("static", static)
        self.encoder = nn.Sequential(nn.Linear(static.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.item_ids = nn.Embedding(n_items, d) if cfg["item_id_embedding"] else None
        if self.item_ids is not None:
            nn.init.normal_(self.item_ids.weight, std=0.02)
        self.label_embedding = nn.Embedding(2, d)  # a history exposure carries its label
        self.user_features = nn.ModuleList(nn.Embedding(c, d) for c in user_cards)
        self.user_proj = nn.Linear(2 * d, d)
        self.quantizer = AddressingQuantizer(levels, width, d, cfg["ema_decay"])
        self.mixer = Mixer(d, N_CROSS, ("rank", "recall"), cfg["cross_layers"], cfg["experts"], hidden)
        self.u2t = nn.ModuleList(nn.Sequential(nn.Linear(2 * d, hidden), nn.ReLU(), nn.Linear(hidden, N_CROSS))
                                 for _ in range(levels))
        self.register_buffer("codes", torch.zeros(n_items, levels, dtype=torch.long))

    def item_embeddings(self) -> torch.Tensor:
        """e_v = Enc(x_v^s) for every item (eq. 1)."""
        e = self.encoder(self.static)
        return e + self.item_ids.weight if self.item_ids is not None else e

    def users(self, e_items: torch.Tensor, hist_items: torch.Tensor, hist_labels: torch.Tensor,
              user_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(e_u, history [B, T, d], mask [B, T]); history slots with item −1 are padding."""
        mask = hist_items >= 0
        history = e_items[hist_items.clamp(min=0)] + self.label_embedding(hist_labels.clamp(min=0))
        history = history * mask[..., None]
        pooled = history.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        profile = sum((emb(user_feats[:, i]) for i, emb in enumerate(self.user_features)),
                      torch.zeros_like(pooled))
        return self.user_proj(torch.cat([profile, pooled], dim=-1)), history, mask

    def u2t_hat(self, level: int, e_u: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """MLP_u2t^(l)([e_u; e_sid^(1:l)]) (eq. 14)."""
        return self.u2t[level](torch.cat([e_u, prefix], dim=-1))


def bucket_means(values: torch.Tensor, codes: torch.Tensor, level: int,
                 users: torch.Tensor | None = None) -> torch.Tensor:
    """u2t^(l)(u) of each row: the mean of `values` over the batch rows of the same user whose SID prefix s_1..s_l
    equals its own (eq. 13); without `users`, over every batch row with that prefix."""
    key = codes[:, :level + 1] if users is None else torch.cat([users[:, None], codes[:, :level + 1]], dim=1)
    _, bucket = torch.unique(key, dim=0, return_inverse=True)
    sums = torch.zeros(int(bucket.max()) + 1, values.shape[1], device=values.device).index_add_(0, bucket, values)
    counts = torch.bincount(bucket).clamp(min=1)
    return (sums / counts[:, None])[bucket]


def balanced_tree_codes(x: np.ndarray, levels: int, width: int, seed: int) -> np.ndarray:
    """Zero-collision starting codes: the harness's hierarchical balanced k-means (W^L ≥ items)."""
    return make_tokenizer("balanced", levels=levels, width=width, seed=seed).fit(x).codes


@register
class DIG(Method):
    name = "dig"
    paper = "Wang, Discrimination Is Generation: Unifying Ranking and Retrieval from a Tokenizer Perspective, 2026"
    needs = ("labelled exposures (else sampled negatives)",)
    uses_user_ids = True
    uses_exposures = True
    probability_scores = True
    retrieves_by_recommend = True  # retrieval is the beam search, not a full-catalogue sweep of the ranker

    # ---- data -------------------------------------------------------------------------------------------------
    def _static_features(self, train: TrainView) -> np.ndarray:
        with train.stage("features"):
            text, provenance = embed_items(train.items, train.text_fields, self.config["embedder"])
        train.provenance["static_features"] = provenance
        attrs = list(train.items["attrs"])
        n_cats = max((max(a) for a in attrs if len(a)), default=-1) + 1
        multi_hot = np.zeros((len(attrs), n_cats), dtype=np.float32)
        for row, cats in enumerate(attrs):
            multi_hot[row, list(cats)] = 1.0
        return np.concatenate([text, multi_hot], axis=1).astype(np.float32)

    def _user_table(self, train: TrainView) -> tuple[np.ndarray, list[int]]:
        table = train.users
        columns = [c for c in (table.columns if table is not None else []) if c != "user_id"]
        if not columns:
            return np.zeros((train.n_users, 0), dtype=np.int64), []
        codes = np.stack([pd.factorize(table[c])[0] for c in columns], axis=1).astype(np.int64)
        return codes, [int(codes[:, i].max()) + 1 for i in range(len(columns))]

    def _training_rows(self, train: TrainView, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Real exposures (rank + recall) and sampled items labelled 0 (recall only), each with its history
        window (the user's real exposures strictly before it) and its prefix cross features."""
        ex = self.exposures.reset_index(drop=True)
        users, ts = ex["user"].to_numpy(), ex["ts"].to_numpy()
        # history windows index the real exposures only (protocol-sampled negatives were never shown), ordered by
        # (user, ts): a row's window ends before the first exposure of its user at or after its time
        real = ex[~ex["sampled"].to_numpy(bool)] if "sampled" in ex else ex
        real_keys = (real["user"].to_numpy(np.int64) << 32) + real["ts"].to_numpy(np.int64)
        row_keys = (users.astype(np.int64) << 32) + ts.astype(np.int64)
        hist_end = np.searchsorted(real_keys, row_keys, side="left")
        hist_start = np.searchsorted(real_keys, users.astype(np.int64) << 32, side="left")
        positives = np.flatnonzero(ex["label"].to_numpy() == 1)
        k = int(self.config["recall_negatives"])
        neg_source = np.repeat(positives, k)
        neg_items = rng.integers(0, train.n_items, size=len(neg_source))
        queries = pd.DataFrame({"user": np.r_[users, users[neg_source]],
                                "item": np.r_[ex["item"].to_numpy(), neg_items],
                                "ts": np.r_[ts, ts[neg_source]]})
        cross = cross_features(ex, queries, self.item_attrs)
        source = np.r_[np.arange(len(ex)), neg_source]
        exposure = np.r_[np.ones(len(ex), bool), np.zeros(len(neg_source), bool)]
        return {"user": queries["user"].to_numpy(), "item": queries["item"].to_numpy(),
                "label": np.r_[ex["label"].to_numpy(), np.zeros(len(neg_source), dtype=np.int64)],
                "exposure": exposure, "cross": cross, "hist_end": hist_end[source], "hist_start": hist_start[source],
                "flat_items": real["item"].to_numpy(), "flat_labels": real["label"].to_numpy()}

    def _windows(self, ends: np.ndarray, starts: np.ndarray, flat_items: np.ndarray, flat_labels: np.ndarray):
        T = int(self.config["max_history"])
        index = ends[:, None] - T + np.arange(T)[None, :]
        valid = index >= starts[:, None]
        index = np.where(valid, index, 0)
        items = np.where(valid, flat_items[index], -1)
        labels = np.where(valid, flat_labels[index], 0)
        return torch.as_tensor(items, device=self.device), torch.as_tensor(labels, device=self.device)

    # ---- training ---------------------------------------------------------------------------------------------
    def fit(self, train: TrainView, budget: Budget) -> None:
        cfg = self.config
        if cfg["u2t_teacher"] not in U2T_TEACHERS:
            raise ConfigError(f"dig: u2t_teacher must be one of {', '.join(U2T_TEACHERS)}, got {cfg['u2t_teacher']!r}")
        self.device = train.device
        rng = np.random.default_rng(train.seed)
        self.exposures = train.exposures
        self.exposure_source = "labelled exposures"
        if self.exposures is None:  # leave-one-out data (e.g. Amazon): interactions + sampled negatives, said so
            self.exposures = exposures_from_sequences(train.sequences, train.n_items, cfg["recall_negatives"] or 1,
                                                      train.seed)
            self.exposure_source = "training sequences as positives + sampled negatives (no labelled exposures)"
        torch.manual_seed(train.seed)
        self.n_items = train.n_items
        self.timed = train.timed
        self.item_attrs = [list(a) for a in train.items["attrs"]]
        static = self._static_features(train)
        self.user_codes, cards = self._user_table(train)
        self.net = DIGNet(torch.as_tensor(static), train.n_items, cards, cfg).to(self.device)
        # item-level cross features at inference: popularity and like rate of the training part as of the evaluated
        # user's moment (their last known exposure), so that other users' later exposures never count
        self.priors = feature_priors(self.exposures)  # shrinkage targets, kept for inference
        self.item_history = ItemHistory(self.exposures, self.priors)

        with torch.no_grad():  # zero-collision start: balanced k-means tree over the initial e_v
            e0 = self.net.item_embeddings()
            codes = balanced_tree_codes(e0.cpu().numpy(), cfg["levels"], cfg["width"], cfg["sid_seed"])
            self.net.codes.copy_(torch.as_tensor(codes, device=self.device))
            self.net.quantizer.init_from_codes(e0, self.net.codes)
        self.code_history = [self._code_stats(None)]

        rows = self._training_rows(train, rng)
        self._flat = (rows["flat_items"], rows["flat_labels"])
        tensors = {k: torch.as_tensor(np.array(rows[k]), device=self.device)
                   for k in ("user", "item", "label", "exposure")}
        tensors["cross"] = torch.as_tensor(rows["cross"], device=self.device)
        user_feats = torch.as_tensor(self.user_codes, device=self.device)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg["lr"])
        epoch = {"n": 0}

        def batches():
            if epoch["n"] > 0 and not cfg["fixed_sids"]:
                self._reassign()
            epoch["n"] += 1
            order = torch.as_tensor(rng.permutation(len(rows["user"])), device=self.device)
            for i in range(0, len(order), cfg["batch_size"]):
                yield order[i:i + cfg["batch_size"]]

        def loss_of(index: torch.Tensor) -> torch.Tensor:
            picked = index.cpu().numpy()
            hist_items, hist_labels = self._windows(rows["hist_end"][picked], rows["hist_start"][picked], *self._flat)
            losses = self.losses(tensors["user"][index], tensors["item"][index], tensors["label"][index].float(),
                                 tensors["exposure"][index], tensors["cross"][index], hist_items, hist_labels,
                                 user_feats)
            self.last_losses = {k: round(float(v.detach()), 5) for k, v in losses.items()}
            return losses["total"]

        train_with_validation(self, self.net, train, budget, optimizer, batches, loss_of, cfg)
        self.code_history.append(self._code_stats(None))
        # items sharing a final SID form one group: the beam-order view then gets expected credit within it
        self.item_group = np.unique(self.net.codes.cpu().numpy(), axis=0, return_inverse=True)[1].reshape(-1)

    def losses(self, users, items, labels, exposure, cross, hist_items, hist_labels, user_feats) -> dict[str, torch.Tensor]:
        """The five losses of eq. 8 on one batch (and the EMA step of the codebooks, outside the gradient)."""
        cfg, net = self.config, self.net
        e_items = net.item_embeddings()
        e_u, history, mask = net.users(e_items, hist_items, hist_labels, user_feats[users])
        e_v = e_items[items]
        zero = e_v.new_zeros(())
        rank = F.binary_cross_entropy_with_logits(
            net.mixer(e_u[exposure], history[exposure], mask[exposure], e_v[exposure], cross[exposure], "rank"),
            labels[exposure]) if exposure.any() else zero
        codes = net.codes[items]
        prefixes = net.quantizer.prefix_embeddings(codes)
        layers = range(cfg["levels"]) if cfg["recall_layers"] == "all" else [cfg["levels"] - 1]
        recall, u2t = zero, zero
        per_user = users if cfg["u2t_teacher"] == "per-user" else None
        for level in range(cfg["levels"]):
            teacher = bucket_means(cross, codes, level, per_user)
            if level in layers:
                logit = net.mixer(e_u, history, mask, prefixes[:, level], teacher, "recall")
                recall = recall + F.binary_cross_entropy_with_logits(logit, labels) / len(layers)
            u2t = u2t + ((net.u2t_hat(level, e_u, prefixes[:, level]) - teacher.detach()) ** 2).sum(-1).mean() \
                / cfg["levels"]
        unique = torch.unique(items)
        commit = net.quantizer.commit_loss(e_items[unique], net.codes[unique])
        sem = net.quantizer.sem_loss(e_items[unique], net.codes[unique])
        if not cfg["fixed_sids"] and net.training:
            net.quantizer.ema_update(e_items[unique].detach(), net.codes[unique])
        total = rank + cfg["recall_loss_weight"] * recall + cfg["commit_weight"] * commit \
            + cfg["sem_weight"] * sem + cfg["u2t_weight"] * u2t
        return {"total": total, "rank": rank, "recall": recall, "commit": commit, "sem": sem, "u2t": u2t}

    @torch.no_grad()
    def _reassign(self) -> None:
        new = self.net.quantizer.assign(self.net.item_embeddings())
        changed = (new != self.net.codes).any(dim=1)
        self.net.codes.copy_(new)
        self.code_history.append(self._code_stats(int(changed.sum())))

    def _code_stats(self, changed: int | None) -> dict[str, Any]:
        codes = self.net.codes.cpu().numpy()
        distinct = len(np.unique(codes, axis=0))
        return {"items_changed": changed, "collision_rate": 1 - distinct / len(codes), "distinct_sids": distinct}

    # ---- inference --------------------------------------------------------------------------------------------
    def _context(self, histories, users, exposures):
        """Per evaluated user: e_u, history states, mask, and the exposure frame that feeds cross features."""
        T = int(self.config["max_history"])
        timed = exposures is not None and self.timed
        if exposures is None:  # positives only (e.g. called outside the labelled protocol)
            exposures = [ExposureHistory(np.asarray(h, np.int64), np.arange(len(h)), np.full(len(h), np.nan),
                                         np.ones(len(h), np.int64)) for h in histories]
        hist_items = np.full((len(exposures), T), -1, dtype=np.int64)
        hist_labels = np.zeros((len(exposures), T), dtype=np.int64)
        for row, ex in enumerate(exposures):
            tail = slice(max(0, len(ex.items) - T), len(ex.items))
            n = tail.stop - tail.start
            hist_items[row, T - n:] = ex.items[tail]
            hist_labels[row, T - n:] = ex.labels[tail]
        users = np.zeros(len(exposures), dtype=np.int64) if users is None else np.asarray(users)
        feats = torch.as_tensor(self.user_codes[users], device=self.device)
        e_items = self.net.item_embeddings()
        e_u, history, mask = self.net.users(e_items, torch.as_tensor(hist_items, device=self.device),
                                            torch.as_tensor(hist_labels, device=self.device), feats)
        known = pd.DataFrame({"user": np.repeat(np.arange(len(exposures)), [len(e.items) for e in exposures]),
                              "item": np.concatenate([e.items for e in exposures]) if exposures else [],
                              "ts": np.concatenate([e.ts for e in exposures]) if exposures else [],
                              "rating": np.concatenate([e.ratings for e in exposures]) if exposures else [],
                              "label": np.concatenate([e.labels for e in exposures]) if exposures else []})
        # a user's moment: after their last known exposure; positions (no labelled exposures) are not times
        as_of = np.array([int(e.ts.max()) + 1 if timed and len(e.ts) else AFTER_ALL for e in exposures],
                         dtype=np.int64)
        return {"e_items": e_items, "e_u": e_u, "history": history, "mask": mask, "known": known, "as_of": as_of}

    def _chunks(self, rows: torch.Tensor, fn, size: int = 8192) -> torch.Tensor:
        return torch.cat([fn(rows[i:i + size]) for i in range(0, len(rows), size)]) if len(rows) else \
            torch.zeros(0, device=self.device)

    def _rank_scores(self, ctx, row_of: np.ndarray, items: np.ndarray) -> torch.Tensor:
        """Ranking-path probabilities for (evaluated-user row, item) pairs, with full u2i cross features."""
        cross = cross_features(ctx["known"], candidate_queries(row_of, items), self.item_attrs, self.priors)
        cross = torch.as_tensor(cross, device=self.device)
        items_t = torch.as_tensor(items, device=self.device)
        cross[:, ITEM_COLUMNS] = torch.as_tensor(self.item_history.at(items, ctx["as_of"][row_of]), device=self.device)
        rows_t = torch.as_tensor(row_of, device=self.device)

        def run(idx):
            return torch.sigmoid(self.net.mixer(ctx["e_u"], ctx["history"], ctx["mask"],
                                                ctx["e_items"][items_t[idx]], cross[idx], "rank", owner=rows_t[idx]))
        return self._chunks(torch.arange(len(items), device=self.device), run)

    def _recall_scores(self, ctx, row_of: np.ndarray, prefix_emb: torch.Tensor, level: int) -> torch.Tensor:
        """Retrieval-path probabilities of SID prefixes (eq. 16): the Mixer with MLP_u2t in place of u2i."""
        rows_t = torch.as_tensor(row_of, device=self.device)

        def run(idx):
            r = rows_t[idx]
            u2t = self.net.u2t_hat(level, ctx["e_u"][r], prefix_emb[idx])
            return torch.sigmoid(self.net.mixer(ctx["e_u"], ctx["history"], ctx["mask"], prefix_emb[idx], u2t,
                                                "recall", owner=r))
        return self._chunks(torch.arange(len(row_of), device=self.device), run)

    def _prefix_tree(self):
        """Per level: the distinct SID prefixes, each one's parent at the level above, and each item's prefix; the
        last level also maps each SID to its items. Built once per state of the code table (re-assignment and the
        restore of the best state write to it in place, which bumps its version)."""
        key = (self.net.codes.data_ptr(), self.net.codes._version)
        if getattr(self, "_tree_key", None) != key:
            self._tree, self._tree_key = self._build_prefix_tree(), key
        return self._tree

    def _build_prefix_tree(self):
        codes = self.net.codes.cpu().numpy()
        levels = []
        parent_inverse = None
        for level in range(codes.shape[1]):
            uniq, inverse = np.unique(codes[:, :level + 1], axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            parent = np.zeros(len(uniq), dtype=np.int64)
            if parent_inverse is not None:
                parent[inverse] = parent_inverse
            levels.append({"codes": torch.as_tensor(uniq, device=self.device), "parent": parent, "inverse": inverse})
            parent_inverse = inverse
        levels[-1]["members"] = pd.Series(np.arange(len(parent_inverse))).groupby(parent_inverse).apply(np.asarray)
        return levels

    def beam_search(self, ctx, beam: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Layer-wise beam search: per user, the final-level prefixes kept and their retrieval-path scores."""
        tree = self._prefix_tree()
        n_users = len(ctx["e_u"])
        result: list[tuple[np.ndarray, np.ndarray]] = []
        frontier = [np.arange(len(tree[0]["codes"])) for _ in range(n_users)]  # level 1: every first code
        for level, info in enumerate(tree):
            if level > 0:  # children of the surviving prefixes
                parent = info["parent"]
                frontier = [np.flatnonzero(np.isin(parent, survivors)) for survivors in frontier]
            row_of = np.repeat(np.arange(n_users), [len(f) for f in frontier])
            flat = np.concatenate(frontier) if frontier else np.zeros(0, dtype=np.int64)
            emb = self.net.quantizer.prefix_embeddings(info["codes"][torch.as_tensor(flat, device=self.device)])
            scores = self._recall_scores(ctx, row_of, emb[:, level], level).cpu().numpy()
            bounds = np.cumsum([0] + [len(f) for f in frontier])
            new_frontier = []
            for u in range(n_users):
                s = scores[bounds[u]:bounds[u + 1]]
                top = np.argsort(-s, kind="stable")[:beam]
                new_frontier.append(frontier[u][top])
                if level == len(tree) - 1:
                    result.append((frontier[u][top], s[top]))
            frontier = new_frontier
        return result

    def recommend(self, histories, k, users=None, exposures=None) -> TopK:
        ctx = self._context(histories, users, exposures)
        found = self.beam_search(ctx, int(self.config["beam"]))
        members = self._prefix_tree()[-1]["members"]
        pools = [np.concatenate([members[s] for s in sids]) if len(sids) else np.zeros(0, np.int64)
                 for sids, _ in found]
        beam_scores = [np.repeat(scores, [len(members[s]) for s in sids]) for sids, scores in found]
        row_of = np.repeat(np.arange(len(pools)), [len(p) for p in pools])
        rank = self._rank_scores(ctx, row_of, np.concatenate(pools)).cpu().numpy() if len(row_of) else np.zeros(0)
        bounds = np.cumsum([0] + [len(p) for p in pools])
        width = min(k, max((len(p) for p in pools), default=0)) or 1
        out_items = torch.full((len(pools), width), -1, dtype=torch.long)
        out_scores = torch.full((len(pools), width), -float("inf"))
        alt_items, alt_scores = out_items.clone(), out_scores.clone()
        for u, pool in enumerate(pools):
            s = rank[bounds[u]:bounds[u + 1]]
            order = np.argsort(-s, kind="stable")[:width]
            out_items[u, :len(order)] = torch.as_tensor(pool[order])
            out_scores[u, :len(order)] = torch.as_tensor(s[order], dtype=torch.float32)
            n = min(width, len(pool))  # the retrieval path alone: beam order, ties inside a collision group
            alt_items[u, :n] = torch.as_tensor(pool[:n])
            alt_scores[u, :n] = torch.as_tensor(beam_scores[u][:n], dtype=torch.float32)
        return TopK(out_items, out_scores, {"alt:retrieval:items": alt_items, "alt:retrieval:scores": alt_scores})

    def score(self, histories, items=None, users=None, exposures=None) -> torch.Tensor:
        """Ranking-path probabilities [B, n_items] (or [B, len(items)])."""
        ctx = self._context(histories, users, exposures)
        items = np.arange(self.n_items) if items is None else items.cpu().numpy()
        row_of = np.repeat(np.arange(len(histories)), len(items))
        return self._rank_scores(ctx, row_of, np.tile(items, len(histories))).view(len(histories), -1).cpu()

    def _pair_scores(self, path: str):
        def scorer(histories, items_per_user, users=None, exposures=None) -> list[np.ndarray]:
            ctx = self._context(histories, users, exposures)
            row_of = np.repeat(np.arange(len(items_per_user)), [len(i) for i in items_per_user])
            flat = np.concatenate(items_per_user) if items_per_user else np.zeros(0, np.int64)
            if path == "rank":
                scores = self._rank_scores(ctx, row_of, flat)
            else:  # an item's full SID through the retrieval path, as the last beam step scores it
                level = self.config["levels"] - 1
                emb = self.net.quantizer.prefix_embeddings(self.net.codes[torch.as_tensor(flat, device=self.device)])
                scores = self._recall_scores(ctx, row_of, emb[:, level], level)
            scores = scores.cpu().numpy()
            bounds = np.cumsum([0] + [len(i) for i in items_per_user])
            return [scores[bounds[i]:bounds[i + 1]] for i in range(len(items_per_user))]
        scorer.pairs = True
        return scorer

    def auc_scorers(self):
        return {"": self._pair_scores("rank"), "recall": self._pair_scores("recall")}

    def diagnostics(self) -> dict[str, Any]:
        stats = self.code_history
        return {"exposure_source": getattr(self, "exposure_source", None), "code_recomputations": stats, "initial_collision_rate": stats[0]["collision_rate"],
                "final_collision_rate": stats[-1]["collision_rate"],
                "final_losses": getattr(self, "last_losses", {})}
