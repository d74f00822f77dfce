"""ETEGRec (Liu et al., Generative Recommender with End-to-End Learnable Item Tokenization, SIGIR 2025).

Tokenizer and generator learn together, neither fixed before the other trains. Where this file follows the authors'
code (github.com/BishopLiu/ETEGRec: `trainer.py`, `model.py`, `config/scientific.yaml`, `run.sh`) the line is given;
everything else is this harness's choice and says so.

Item tokenizer. An RQ-VAE over collaborative item embeddings (the item table of a SASRec trained on the training split,
`sasrec-cf`, standardised per dimension), L levels of W codes (3 × 256, the reference's `num_emb_list`), warm-started
by `tokenizer_warmup_epochs` of RQ-VAE training (the reference loads a pre-trained RQ-VAE, `rqvae_path`). Items whose
L codes coincide are told apart by a counter token (`counter_width` values), the reference's `get_code`
(trainer.py L761-768).

Generative recommender. The T5-style encoder-decoder of the shared engine reads the history's codes and emits the
target's codes level by level, trained with teacher-forced code cross-entropy. Its code embeddings are tied: level
l's table embeds level-l tokens and scores level l (logits = decoder state · the level's code embeddings, no bias),
as the reference's per-level `token_embeddings` do (model.py L46, L88, L113, L130-131). `tie_code_embeddings` makes
the engine's heads views of its one embedding table (`TiedCodeHead`), so the engine itself is unchanged. The code
embeddings start from N(0, `code_embedding_std`²), 0.02 as the reference's (model.py L58-64); smoke: 0.125.

Alignment (after `align_warmup` epochs, in both phases; the reference's `warm_epoch`, trainer.py L517-529):
- SIA, sequence-item alignment: the pooled encoder state, projected into the embedding space and tokenized, should
  give the same per-level code distributions as the target item: symmetric KL per level (trainer.py L271-274, L397-400);
- PSA, preference-semantic alignment: the decoder's first state (before any code) and the tokenizer's reconstruction
  of the target: symmetric InfoNCE with τ = `psa_temperature` (0.07, the reference's `tau`; trainer.py L277-278).
Every term that is about the target item (RQ-VAE loss, SIA, PSA) is taken over the batch's distinct targets, one row
each (the first), as the reference does with `np.unique(..., return_index=True)` (trainer.py L250, L357-364, L385): a
target that occurs twice in a batch is then not its own negative in PSA's InfoNCE. Code cross-entropy stays per row.

Alternating optimisation. Training runs in cycles of one tokenizer epoch followed by `generator_epochs` generator
epochs; the reference's cycle is tokenizer first (`epoch % cycle == 0`, trainer.py L515, L542) with cycle = 2, i.e.
1:1 (run.sh, config/scientific.yaml), hence `generator_epochs: 1`. In a tokenizer epoch the generator is frozen and
the loss is RQ-VAE + alignment; after it every item's codes are recomputed and the validity structure rebuilt (the
record counts changed SIDs and the collision rate each time). In a generator epoch the tokenizer is frozen and the
loss is code CE + alignment. Validation, early stopping and the kept best state follow generator epochs only: the
reference validates every `eval_step` = 2 epochs with cycle = 2 (trainer.py L56, L558), i.e. after each generator
epoch; a validation right after a tokenizer epoch would judge a generator that has not yet seen the new codes.
`patience` therefore counts generator epochs.

Learning rates. Each part has its optimiser and a schedule of linear warm-up then decay, `lr_schedule: cosine` as in
the reference (`lr_scheduler_type: cosine`, config/scientific.yaml; trainer.py L95-107, transformers' cosine
schedule with warm-up). Its horizons are the reference's: the generator warms up over `warmup_steps` and decays over
the steps of every epoch under the epoch cap, although it steps only in its own epochs (so with 1:1 it ends the cap
half-way down its cosine); the tokenizer warms up over `warmup_steps // cycle` and decays over `1 / cycle` of that
horizon (trainer.py L102-107; cycle = 1 + `generator_epochs`).

Decoding. Beam search over the SID vocabulary, constrained to valid SIDs by default. With free decoding
(`constrained: false`) the counter can take any of `counter_width` values while an item's collision group may be
smaller; the resolver keys SIDs over the widths the generator decodes, so a counter at or beyond its group's size
resolves to no item and is counted invalid, never carried into the level above (the engine's SIDResolver).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from harness.api import Budget, TrainView, check_finite, register
from harness.engines.generative import GenerativeRetrieval, training_samples
from harness.engines.training import autocast, lr_multiplier
from harness.errors import ConfigError, HarnessError
from harness.features import embed_items
from harness.nn.transformer import SIDTransformer
from harness.sid import SIDTable, build_table
from harness.sid.tokenizers import RQVAEModel, standardise

# each with a linear warm-up from 0; `linear-warmup` (then flat) means what it means in the shared engine


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


def first_rows(values: torch.Tensor) -> torch.Tensor:
    """Row of the first occurrence of each distinct value, in ascending value order (numpy's
    `np.unique(..., return_index=True)`, which the reference uses to take each target once)."""
    distinct, inverse = torch.unique(values, return_inverse=True)
    rows = torch.arange(len(values), device=values.device)
    first = torch.full((len(distinct),), len(values), dtype=torch.long, device=values.device)
    return first.scatter_reduce(0, inverse, rows, reduce="amin")


class TiedCodeHead(nn.Module):
    """The output head of one SID level made of that level's input code embeddings: logits = state · E_lᵀ, no bias.
    The table is held, not registered, so it stays one parameter of the model (embedding and head at once)."""

    def __init__(self, embedding: nn.Embedding, offset: int, width: int):
        super().__init__()
        self._embedding = (embedding,)
        self.offset, self.width = offset, width

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight[self.offset:self.offset + self.width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def tie_code_embeddings(model: SIDTransformer, init_std: float) -> SIDTransformer:
    """Replace the generator's untied per-level heads by its input code embeddings (level l's rows of the shared
    table, from `code_offset[l]`), drawn anew from N(0, init_std²)."""
    with torch.no_grad():
        model.embed.weight[int(model.code_offset[0]):].normal_(0.0, init_std)
    model.heads = nn.ModuleList(TiedCodeHead(model.embed, offset, width)
                                for offset, width in zip(model.code_offset.tolist(), model.shape.widths))
    return model


@register
class ETEGRec(GenerativeRetrieval):
    name = "etegrec"
    paper = "Liu et al., Generative Recommender with End-to-End Learnable Item Tokenization (ETEGRec), SIGIR 2025"
    needs = ("sids",)

    # --- tokenizer and codes ------------------------------------------------------------------------------------
    def decoded_widths(self) -> list[int]:
        cfg = self.config
        return [cfg["width"]] * cfg["levels"] + [cfg["counter_width"]]

    def use_table(self, table: SIDTable, widths: list[int] | None = None) -> None:
        super().use_table(table, self.decoded_widths() if widths is None else widths)

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
        self.use_table(table, self.decoded_widths())
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
        """Code CE over every row (generator phase) or the RQ-VAE loss (tokenizer phase), + SIA and PSA when `align`.
        The per-target terms take each distinct target of the batch once (its first row)."""
        cfg = self.config
        sids, users, targets = self.history_sids(hists), users.to(self.device), targets.to(self.device)
        memory = self.model.memory(sids, users)
        target_sids = self.item_sids[targets]
        states = self.model.decoder_states(sids, users, target_sids, encoded=memory)
        once = first_rows(targets)
        items = self.cf[targets[once]]
        loss = self.tokenizer_loss(items) if phase == "tokenizer" else sum(
            F.cross_entropy(lg, target_sids[:, level])
            for level, lg in enumerate(self.model.decode_logits(states, 0)))
        if not align:
            return loss
        pooled = memory.mean()
        seq_levels = level_distributions(self.tokenizer, self.tokenizer.encoder(self.align["sequence"](pooled[once])))
        item_levels = level_distributions(self.tokenizer, self.tokenizer.encoder(items))
        sia = sum(symmetric_kl(p, q) for p, q in zip(seq_levels, item_levels)) / len(seq_levels)
        z_q, _, _ = self.tokenizer.quantizer(self.tokenizer.encoder(items))
        psa = symmetric_info_nce(self.align["preference"](states[once, 0]), self.tokenizer.decoder(z_q),
                                 cfg["psa_temperature"])
        return loss + cfg["sia_weight"] * sia + cfg["psa_weight"] * psa

    # --- alternating training -----------------------------------------------------------------------------------
    def phase_of(self, epoch: int) -> str:
        """Cycles of one tokenizer epoch, then `generator_epochs` generator epochs (the reference: 1:1, tokenizer
        first)."""
        return "tokenizer" if epoch % (1 + int(self.config["generator_epochs"])) == 0 else "generator"

    def train_epoch(self, phase: str, align: bool, samples, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, budget: Budget, step: int = 0, scheduler: Any = None) -> int:
        """One epoch of one phase: the other part is frozen (no gradient, and its optimizer is not stepped); the
        phase's learning-rate schedule advances once per step. Returns the running step count."""
        users, hists, targets = samples
        frozen = self.tokenizer if phase == "generator" else self.model
        self.parts.train()
        frozen.requires_grad_(False)
        try:
            for idx in torch.randperm(len(targets), generator=generator).split(self.config["batch_size"]):
                if budget.exhausted():
                    break
                with autocast(self.precision, self.device):
                    loss = self.losses(users[idx], hists[idx], targets[idx], phase, align)
                check_finite(loss, step)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.parts.parameters(), 1.0)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                step += 1
        finally:
            frozen.requires_grad_(True)
        return step

    def lr_schedules(self, optimizers: dict[str, torch.optim.Optimizer], epochs: int,
                     steps_per_epoch: int) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
        """Warm-up then decay per part, with the reference's horizons (trainer.py L78-107): the generator's spans
        every epoch under the cap, the tokenizer's warm-up and horizon are the generator's divided by the cycle."""
        cfg = self.config
        cycle = 1 + int(cfg["generator_epochs"])
        warmup, horizon = int(cfg["warmup_steps"]), epochs * steps_per_epoch
        kind = cfg["lr_schedule"]
        return {"generator": torch.optim.lr_scheduler.LambdaLR(
                    optimizers["generator"], lr_multiplier(kind, warmup, horizon)),
                "tokenizer": torch.optim.lr_scheduler.LambdaLR(
                    optimizers["tokenizer"], lr_multiplier(kind, warmup // cycle, horizon // cycle))}

    def fit(self, train: TrainView, budget: Budget) -> None:
        cfg = self.config
        self.device, self.precision = train.device, train.precision
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
        shape.widths = self.decoded_widths()
        self.model = tie_code_embeddings(SIDTransformer(shape), cfg["code_embedding_std"]).to(self.device)
        self.align = nn.ModuleDict({"sequence": nn.Linear(cfg["d_model"], cf.shape[1]),
                                    "preference": nn.Linear(cfg["d_model"], cf.shape[1])}).to(self.device)
        self.parts = parts = nn.ModuleDict({"generator": self.model, "tokenizer": self.tokenizer, "align": self.align})
        optimizers = {
            "generator": torch.optim.Adam([*self.model.parameters(), *self.align.parameters()], lr=cfg["lr"],
                                          weight_decay=cfg["weight_decay"]),
            "tokenizer": torch.optim.Adam([*self.tokenizer.parameters(), *self.align.parameters()],
                                          lr=cfg["tokenizer_lr"])}
        users, hists, targets = training_samples(train.sequences, cfg["max_history"], cfg["sliding_window"])
        epochs = budget.epochs(int(cfg["epochs"]))
        schedules = self.lr_schedules(optimizers, epochs, math.ceil(len(targets) / cfg["batch_size"]))
        best, best_state, bad, step = -float("inf"), None, 0, 0
        for epoch in tqdm(range(epochs), desc="etegrec epochs", leave=False, disable=None):
            phase = self.phase_of(epoch)
            step = self.train_epoch(phase, epoch >= cfg["align_warmup"], (users, hists, targets), optimizers[phase],
                                    generator, budget, step, schedules[phase])
            budget.epoch_done()
            if phase == "tokenizer":
                self.recomputations.append({"epoch": epoch + 1, **self.recompute_codes()})
            else:  # validated after generator epochs only, the one the clock ended too
                parts.eval()
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
