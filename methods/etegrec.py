"""ETEGRec (Liu et al., Generative Recommender with End-to-End Learnable Item Tokenization, SIGIR 2025).

Tokenizer and generator are trained together instead of one after the other.

Tokenizer: an RQ-VAE over collaborative item embeddings (a SASRec's item table trained on the training split,
`sasrec-cf`, standardised per dimension), L × W codes (3 × 256) + a counter token that numbers colliding items.
Generator: the T5-style encoder-decoder of the shared engine, trained with teacher-forced code cross-entropy.
Two alignment losses tie them (after `align_warmup` epochs):
- SIA (sequence-item alignment): the pooled encoder state, projected into the embedding space and tokenized, should
  give the same per-level code distributions as the target item: symmetric KL, per level;
- PSA (preference-semantic alignment): the decoder's first state (before any code) and the tokenizer's reconstruction
  of the target's embedding: symmetric in-batch InfoNCE, τ = 0.07.
Alternating schedule: a tokenizer epoch (generator frozen; RQ-VAE loss + alignment), after which every item's codes
are recomputed and the validity structure rebuilt (the record counts changed SIDs and the collision rate each time),
then `generator_epochs` generator epochs (tokenizer frozen; code CE + alignment).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from harness.api import Budget, TrainView, check_finite, register
from harness.engines.generative import GenerativeRetrieval, training_samples
from harness.errors import HarnessError
from harness.features import embed_items
from harness.nn.transformer import SIDTransformer
from harness.sid import build_table
from harness.sid.tokenizers import RQVAEModel, standardise


def level_distributions(model: RQVAEModel, z: torch.Tensor, temperature: float = 1.0) -> list[torch.Tensor]:
    """Per level, the log-softmax over codes of −distance from the residual (residuals follow the nearest codes)."""
    out, residual = [], z
    for book in model.quantizer.codebooks:
        dist = torch.cdist(residual, book) ** 2
        out.append(F.log_softmax(-dist / temperature, dim=-1))
        residual = residual - book[dist.argmin(dim=1)]
    return out


def symmetric_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
                  + F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


@register
class ETEGRec(GenerativeRetrieval):
    name = "etegrec"
    paper = "Liu et al., Generative Recommender with End-to-End Learnable Item Tokenization (ETEGRec), SIGIR 2025"
    needs = ("sids",)

    # --- tokenizer and codes ------------------------------------------------------------------------------------
    def recompute_codes(self) -> dict[str, Any]:
        """Every item's SID from the current tokenizer; rebuild the table, trie and resolver. Returns what changed."""
        cfg = self.config
        with torch.no_grad():
            _, codes, _ = self.tokenizer.quantizer(self.tokenizer.encoder(self.cf))
        table = build_table(codes.cpu().numpy(), [cfg["width"]] * cfg["levels"], "dedup-token")
        if table.widths[-1] > cfg["counter_width"]:
            raise HarnessError(f"{table.widths[-1]} items share one SID, more than counter_width="
                               f"{cfg['counter_width']}; raise counter_width or the codebook size")
        previous = getattr(self, "table", None)
        changed = int((previous.codes != table.codes).any(axis=1).sum()) if previous is not None else len(table.codes)
        self.use_table(table, [cfg["width"]] * cfg["levels"] + [cfg["counter_width"]])
        n = len(table.codes)
        return {"items_changed_sid": changed, "collision_rate": table.info["items_in_collisions"] / max(1, n)}

    def pretrain_tokenizer(self, epochs: int, generator: torch.Generator, budget: Budget) -> None:
        """RQ-VAE warm start on the collaborative embeddings (k-means initialised codebooks)."""
        with torch.no_grad():
            self.tokenizer.quantizer.init_kmeans(self.tokenizer.encoder(self.cf), self.config["sid_seed"])
        optimizer = torch.optim.Adam(self.tokenizer.parameters(), lr=self.config["tokenizer_pretrain_lr"])
        for _ in range(epochs):
            if budget.exhausted():
                break
            for idx in torch.randperm(len(self.cf), generator=generator).split(1024):
                loss = self.tokenizer_loss(self.cf[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    def tokenizer_loss(self, x: torch.Tensor) -> torch.Tensor:
        """RQ-VAE loss with every squared error averaged over elements, as the reference RQ-VAE weighs it. The shared
        quantizer sums its VQ terms over latent dimensions, so they are divided by the latent size here: a summed VQ
        term beside a mean reconstruction is `latent` times too strong and drives the encoder to collapse items onto
        a few codes (on scientific's raw sasrec-cf table: 33-72% of items collided after the warm start, 0.3% with
        consistent means)."""
        z = self.tokenizer.encoder(x)
        z_q, _, vq_loss = self.tokenizer.quantizer(z)
        return F.mse_loss(self.tokenizer.decoder(z_q), x) + vq_loss / z.shape[-1]

    # --- losses -------------------------------------------------------------------------------------------------
    def losses(self, users, hists, targets, phase: str, align: bool) -> torch.Tensor:
        cfg = self.config
        sids, users, targets = self.history_sids(hists), users.to(self.device), targets.to(self.device)
        memory, mask = self.model.memory(sids, users)
        target_sids = self.item_sids[targets]
        states = self.model.decoder_states(sids, users, target_sids, encoded=(memory, mask))
        loss = self.tokenizer_loss(self.cf[targets]) if phase == "tokenizer" else sum(
            F.cross_entropy(lg, target_sids[:, level])
            for level, lg in enumerate(self.model.decode_logits(states, 0)))
        if not align:
            return loss
        real = mask.reshape(len(memory), -1).float()
        pooled = (memory * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        seq_levels = level_distributions(self.tokenizer, self.tokenizer.encoder(self.align["sequence"](pooled)))
        item_levels = level_distributions(self.tokenizer, self.tokenizer.encoder(self.cf[targets]))
        sia = sum(symmetric_kl(p, q) for p, q in zip(seq_levels, item_levels)) / len(seq_levels)
        z_q, _, _ = self.tokenizer.quantizer(self.tokenizer.encoder(self.cf[targets]))
        psa = symmetric_info_nce(self.align["preference"](states[:, 0]), self.tokenizer.decoder(z_q),
                                 cfg["psa_temperature"])
        return loss + cfg["sia_weight"] * sia + cfg["psa_weight"] * psa

    # --- alternating training -----------------------------------------------------------------------------------
    def train_epoch(self, phase: str, align: bool, samples, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, budget: Budget, step: int = 0) -> int:
        """One epoch of one phase: the other part is frozen (no gradient, and its optimizer is not stepped).
        Returns the running step count."""
        users, hists, targets = samples
        frozen = self.tokenizer if phase == "generator" else self.model
        self.parts.train()
        frozen.requires_grad_(False)
        try:
            for idx in torch.randperm(len(targets), generator=generator).split(self.config["batch_size"]):
                if budget.exhausted():
                    break
                loss = self.losses(users[idx], hists[idx], targets[idx], phase, align)
                check_finite(loss, step)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.parts.parameters(), 1.0)
                optimizer.step()
                step += 1
        finally:
            frozen.requires_grad_(True)
        return step

    def fit(self, train: TrainView, budget: Budget) -> None:
        cfg = self.config
        self.device = train.device
        torch.manual_seed(train.seed)
        generator = torch.Generator().manual_seed(train.seed)
        self.interactions = train.interactions()
        with train.stage("collaborative"):
            cf, provenance = embed_items(train.items, train.text_fields, "sasrec-cf", self.interactions,
                                         **cfg["collaborative_options"])
        train.provenance.setdefault("features", []).append(provenance)
        cf = standardise(cf)  # as LETTER's tokenizer does with its inputs
        self.cf = torch.as_tensor(cf, dtype=torch.float32, device=self.device)
        self.tokenizer = RQVAEModel(cf.shape[1], cfg["tokenizer_hidden"], cfg["tokenizer_latent"], cfg["levels"],
                                    cfg["width"], 0.25).to(self.device)
        self.pretrain_tokenizer(cfg["tokenizer_warmup_epochs"], generator, budget)
        self.recomputations = [self.recompute_codes()]
        shape = self.model_shape()
        shape.widths = [cfg["width"]] * cfg["levels"] + [cfg["counter_width"]]
        self.model = SIDTransformer(shape).to(self.device)
        self.align = nn.ModuleDict({"sequence": nn.Linear(cfg["d_model"], cf.shape[1]),
                                    "preference": nn.Linear(cfg["d_model"], cf.shape[1])}).to(self.device)
        self.parts = parts = nn.ModuleDict({"generator": self.model, "tokenizer": self.tokenizer, "align": self.align})
        optimizers = {
            "generator": torch.optim.Adam([*self.model.parameters(), *self.align.parameters()], lr=cfg["lr"],
                                          weight_decay=cfg["weight_decay"]),
            "tokenizer": torch.optim.Adam([*self.tokenizer.parameters(), *self.align.parameters()],
                                          lr=cfg["tokenizer_lr"])}
        users, hists, targets = training_samples(train.sequences, cfg["max_history"], cfg["sliding_window"])
        best, best_state, bad, step = -float("inf"), None, 0, 0
        cycle = cfg["generator_epochs"] + 1
        for epoch in tqdm(range(budget.epochs(int(cfg["epochs"]))), desc="etegrec epochs", leave=False, disable=None):
            phase = "tokenizer" if epoch % cycle == cycle - 1 else "generator"
            step = self.train_epoch(phase, epoch >= cfg["align_warmup"], (users, hists, targets), optimizers[phase],
                                    generator, budget, step)
            if phase == "tokenizer":
                self.recomputations.append({"epoch": epoch + 1, **self.recompute_codes()})
            budget.epoch_done()
            parts.eval()  # every epoch is validated, the one the clock ended too
            value = train.validate(self)[cfg["valid_metric"]]
            if value > best:
                best, bad = value, 0
                best_state = (copy.deepcopy(parts.state_dict()), self.table)
            else:
                bad += 1
            if budget.exhausted() or bad >= cfg["patience"]:
                break
        if best_state is not None:  # the best generator together with the codes it was validated on
            parts.load_state_dict(best_state[0])
            self.table = None
            self.recompute_codes()
            if not np.array_equal(self.table.codes, best_state[1].codes):
                raise HarnessError("restored tokenizer does not reproduce its codes")
        parts.eval()

    def diagnostics(self) -> dict[str, Any]:
        info = super().diagnostics()
        info["sids"] = {"tokenizer": "etegrec rq-vae over sasrec-cf", "levels": self.config["levels"],
                        "width": self.config["width"], "counter_width": self.config["counter_width"]}
        info["code_recomputations"] = getattr(self, "recomputations", [])
        return info
