"""LETTER's learnable tokenizer (Wang et al., CIKM 2024): an RQ-VAE over item text embeddings that also learns from
collaborative signals and spreads its codes.

Loss per batch, with z = encoder(x), ẑ = Σ_l e_l (the quantised latent) and x̂ = decoder(ẑ), squared errors
averaged over elements (the scale α and β are set for):
- reconstruction ‖x − x̂‖² and, per level, the VQ loss ‖sg(r_l) − e_l‖² + μ‖r_l − sg(e_l)‖² (μ = 0.25);
- α · CF loss: in-batch InfoNCE between ẑ and the item's collaborative embedding (a SASRec's item table trained on
  the training split, `sasrec-cf`), so items users consume together get nearby quantised latents, hence shared codes;
- β · diversity loss: each level's codebook is grouped into clusters by size-constrained k-means (re-clustered every
  epoch); an item's quantised vector is pulled, by cross-entropy over the codebook, toward another code of its
  code's cluster, which spreads items over codes instead of piling them on a few;
- the last level assigns codes by Sinkhorn-balanced optimal transport (equal mass per code) during training;
- codebooks start from size-constrained k-means (`constrained_init`).

Indexing, as the reference's index generation does: every item takes its nearest code at every level; then, for up
to `collision_rounds` rounds, each group of items sharing a whole SID is quantised again on its own with the
Sinkhorn-balanced last level, which spreads the group over distinct last codes. The VQ loss is the mean over levels.
The codes' `info["collision_resolution"]` keeps the collision figures before and after those rounds (`harness sids
report` prints them).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.nn.rng import own_rng
from harness.sid.tokenizers import (SIDCodes, Tokenizer, balanced_assign, kmeans, mlp, ResidualQuantizer,
                                    standardise, tokenizer)


def sinkhorn_plan(residual: torch.Tensor, book: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The log transport plan between rows and codes: entropic optimal transport with uniform marginals (every row
    mass 1/rows, every code 1/codes), in the log domain, on distances rescaled to [-1, 1] as LETTER does."""
    dist = torch.cdist(residual, book).double() ** 2
    middle = (dist.max() + dist.min()) / 2
    dist = (dist - middle) / (dist.max() - middle + 1e-5)
    log_p = -dist / epsilon
    rows, cols = log_p.shape
    for _ in range(iterations):
        log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True) - math.log(cols)
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True) - math.log(rows)
    return log_p


def sinkhorn_codes(residual: torch.Tensor, book: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Balanced assignment of rows to codes: each row takes its code of highest transport mass."""
    return sinkhorn_plan(residual, book, epsilon, iterations).argmax(dim=1)


def constrained_init(quantizer: ResidualQuantizer, z: torch.Tensor, seed: int) -> None:
    """Each level's codebook from size-constrained k-means of that level's residuals, as the reference initialises
    it: k-means centres, then every point to its nearest centre with room (at most 4 × min(n / 2W, 50) points per
    code), and each code the mean of its points, so that no code starts out holding a crowd."""
    residual = z.clone()
    for level, book in enumerate(quantizer.codebooks):
        points = residual.cpu().numpy()
        width = book.shape[0]
        labels, centers = kmeans(points, width, seed + level)
        capacity = 4 * max(1, min(len(points) // (2 * width), 50))
        if len(centers) == width and capacity * width >= len(points):
            labels = balanced_assign(points, centers, capacity)
            for code in np.unique(labels):
                centers[code] = points[labels == code].mean(axis=0)
        filled = torch.as_tensor(centers, dtype=book.dtype)
        if len(filled) < width:  # fewer distinct points than codes: pad with jittered copies, as k-means init does
            extra = filled[torch.randint(len(filled), (width - len(filled),))]
            filled = torch.cat([filled, extra + 1e-3 * torch.randn_like(extra)])
        book.copy_(filled)
        residual -= book[torch.as_tensor(labels)]


def cf_loss(quantized: torch.Tensor, collaborative: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch InfoNCE: item i's quantised latent should score its own collaborative embedding above those of the
    other items of the batch (dot products over a temperature)."""
    logits = quantized @ collaborative.T / temperature
    return F.cross_entropy(logits, torch.arange(len(quantized), device=quantized.device))


class CodeClusters:
    """Codes of one codebook grouped by size-constrained k-means; samples, for each code, another code of its group."""

    def __init__(self, book: np.ndarray, n_clusters: int, seed: int):
        k = max(1, min(n_clusters, len(book)))
        _, centers = kmeans(book, k, seed, max_iter=20)
        labels = balanced_assign(book, centers, capacity=2 * -(-len(book) // len(centers)))
        order = np.argsort(labels, kind="stable")
        sizes = np.bincount(labels, minlength=len(centers))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.label = torch.as_tensor(labels)
        self.size = torch.as_tensor(sizes)[self.label]  # size of each code's cluster
        self.members = torch.as_tensor(order)
        self.start = torch.as_tensor(starts)[self.label]
        rank = np.empty(len(book), dtype=np.int64)
        rank[order] = np.arange(len(book)) - np.repeat(starts, sizes)
        self.rank = torch.as_tensor(rank)  # position of each code inside its cluster

    def other_code(self, codes: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """For each code, a uniformly drawn different code of its cluster, and a mask of codes that have one."""
        size = self.size[codes]
        draw = (torch.rand(len(codes), generator=generator) * (size - 1).clamp(min=1)).long()
        draw = draw + (draw >= self.rank[codes]).long()  # skip the code itself
        return self.members[self.start[codes] + draw.clamp(max=(size - 1).clamp(min=0))], size > 1


def collision_figures(codes: torch.Tensor) -> dict[str, int]:
    """Unique SIDs, collision groups (SIDs of two or more items), the items in them and the largest group."""
    _, counts = torch.unique(codes, dim=0, return_counts=True)
    return {"unique_sids": int(len(counts)), "collision_groups": int((counts > 1).sum()),
            "items_in_collisions": int(counts[counts > 1].sum()), "largest_group": int(counts.max()) if len(counts)
            else 0}


@tokenizer("letter")
class LETTER(Tokenizer):
    uses_collaborative = True
    revision = 1  # size-constrained codebook initialisation

    def __init__(self, levels=4, width=256, seed=0, hidden: list[int] | None = None, latent: int = 32,
                 mu: float = 0.25, alpha: float = 0.02, beta: float = 0.0001, clusters: int = 10,
                 cf_temperature: float = 1.0, diversity_temperature: float = 1.0, sinkhorn_epsilon: float = 0.003,
                 sinkhorn_iters: int = 50, epochs: int = 100, lr: float = 1e-3, batch_size: int = 1024,
                 collision_rounds: int = 20):
        super().__init__(levels, width, seed, hidden=list(hidden or [512, 256, 128]), latent=latent, mu=mu,
                         alpha=alpha, beta=beta, clusters=clusters, cf_temperature=cf_temperature,
                         diversity_temperature=diversity_temperature, sinkhorn_epsilon=sinkhorn_epsilon,
                         sinkhorn_iters=sinkhorn_iters, epochs=epochs, lr=lr, batch_size=batch_size,
                         collision_rounds=collision_rounds)

    def _quantize(self, quantizer: ResidualQuantizer, z: torch.Tensor, balance_last: bool):
        """Residual quantisation; returns ẑ with straight-through gradients, codes, per-level VQ loss and each
        level's chosen code vectors."""
        o = self.options
        residual, quantized, codes, chosen = z, torch.zeros_like(z), [], []
        loss = z.new_zeros(())
        for level, book in enumerate(quantizer.codebooks):
            last = level == len(quantizer.codebooks) - 1
            if last and balance_last and o["sinkhorn_epsilon"] > 0:
                with torch.no_grad():
                    idx = sinkhorn_codes(residual, book, o["sinkhorn_epsilon"], o["sinkhorn_iters"])
            else:
                idx = torch.cdist(residual, book).argmin(dim=1)
            q = book[idx]
            loss = loss + F.mse_loss(q, residual.detach()) + o["mu"] * F.mse_loss(residual, q.detach())
            quantized = quantized + q
            residual = residual - q.detach()
            codes.append(idx)
            chosen.append(q)
        loss = loss / len(quantizer.codebooks)  # the mean over levels, as the reference weighs it
        return z + (quantized - z).detach(), torch.stack(codes, 1), loss, chosen

    @own_rng
    def fit(self, x: np.ndarray, collaborative: np.ndarray) -> SIDCodes:
        o = self.options
        if collaborative.shape[0] != x.shape[0]:
            raise ConfigError(f"collaborative embeddings have {collaborative.shape[0]} rows for {x.shape[0]} items")
        if collaborative.shape[1] != o["latent"]:
            raise ConfigError(f"the CF loss compares the {o['latent']}-d quantised latent with {collaborative.shape[1]}"
                              f"-d collaborative embeddings: set latent={collaborative.shape[1]} or the embedder's dim")
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        x = standardise(x)
        data = torch.as_tensor(x, dtype=torch.float32)
        cf = torch.as_tensor(collaborative, dtype=torch.float32)
        encoder = mlp([x.shape[1], *o["hidden"], o["latent"]])
        decoder = mlp([o["latent"], *reversed(o["hidden"]), x.shape[1]])
        quantizer = ResidualQuantizer(self.levels, self.width, o["latent"])
        with torch.no_grad():
            constrained_init(quantizer, encoder(data), self.seed)
        params = [*encoder.parameters(), *decoder.parameters(), *quantizer.parameters()]
        optimizer = torch.optim.Adam(params, lr=o["lr"])
        for epoch in range(o["epochs"]):
            clusters = [CodeClusters(book.detach().numpy(), o["clusters"], self.seed + epoch)
                        for book in quantizer.codebooks] if o["beta"] > 0 else []
            for idx in torch.randperm(len(data), generator=generator).split(o["batch_size"]):
                z = encoder(data[idx])
                z_q, codes, vq_loss, chosen = self._quantize(quantizer, z, balance_last=True)
                loss = F.mse_loss(decoder(z_q), data[idx]) + vq_loss  # element means, as LETTER weighs α, β
                if o["alpha"] > 0:
                    loss = loss + o["alpha"] * cf_loss(z_q, cf[idx], o["cf_temperature"])
                for level, groups in enumerate(clusters):
                    loss = loss + o["beta"] * self._diversity(quantizer.codebooks[level], chosen[level],
                                                              codes[:, level], groups, generator)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            z = encoder(data)
            _, codes, _, _ = self._quantize(quantizer, z, balance_last=False)
            before = collision_figures(codes)
            codes, rounds = self._resolve_collisions(quantizer, z, codes)
            z_q = sum(book[codes[:, level]] for level, book in enumerate(quantizer.codebooks))
            error = float(((decoder(z_q) - data) ** 2).sum(-1).mean())
        books = [b.detach().numpy() for b in quantizer.codebooks]
        # what `harness sids report` prints beside the final codes' figures: the collisions the resolution rounds met
        resolution = {"rounds_allowed": int(self.options["collision_rounds"]), "rounds_run": rounds,
                      "before": before, "after": collision_figures(codes)}
        return SIDCodes(codes.numpy().astype(np.int64), [self.width] * self.levels, books, error,
                        {"collision_resolution": resolution})

    def _resolve_collisions(self, quantizer: ResidualQuantizer, z: torch.Tensor,
                            codes: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Re-quantise each group of items that share a whole SID with the balanced last level, for up to
        `collision_rounds` rounds or until no SID is shared. Returns the codes and the rounds that re-quantised."""
        codes = codes.clone()
        rounds = 0
        for _ in range(self.options["collision_rounds"] if self.options["sinkhorn_epsilon"] > 0 else 0):
            _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
            shared = torch.nonzero(counts > 1).flatten()
            if not len(shared):
                break
            rounds += 1
            for group in shared.tolist():
                members = torch.nonzero(inverse == group).flatten()
                codes[members] = self._quantize(quantizer, z[members], balance_last=True)[1]
        return codes, rounds

    def _diversity(self, book: torch.Tensor, chosen: torch.Tensor, codes: torch.Tensor, groups: CodeClusters,
                   generator: torch.Generator) -> torch.Tensor:
        target, usable = groups.other_code(codes, generator)
        if not usable.any():
            return chosen.new_zeros(())
        logits = (chosen @ book.T) / self.options["diversity_temperature"]
        logits = logits.masked_fill(F.one_hot(codes, len(book)).bool(), float("-inf"))  # never the item's own code
        return F.cross_entropy(logits[usable], target[usable])
