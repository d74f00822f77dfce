"""Tokenizers: item embeddings [n_items, d] → codes [n_items, L] (one code per level) plus codebooks.

- `rkmeans`: residual k-means (k-means++ init; optional L2-normalised residuals, GRID §4)
- `rvq`: residual vector quantisation trained with the straight-through estimator (β = 0.25)
- `rqvae`: MLP encoder → residual quantiser (per-level codebooks, k-means init, dead-code restarts) → MLP decoder,
  optionally on inputs standardised per dimension (`standardize=true`, TIGER's config)
- `balanced` (`harness/sid/balanced.py`): a balanced k-means tree, equal-size clusters within each parent over
  every level, so codes are unique whenever W^L ≥ n_items (DIG's zero-collision start)
- `index-file`: an LC-Rec style `*.index.json` (item → ["<a_12>", "<b_3>", ...])
All are deterministic for a seed. Levels L and width W are config values (GRID's default 3 × 256).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.config import Registry
from harness.errors import ConfigError, HarnessError
from harness.nn.rng import own_rng

# Every tokenizer by name; the balanced tree and LETTER live in modules of their own, listed here.
TOKENIZERS: Registry[type["Tokenizer"]] = Registry("tokenizer", discover=["harness.sid.balanced",
                                                                         "harness.sid.letter"])
tokenizer = TOKENIZERS.register  # @tokenizer("name") registers a class under that name


@dataclass
class SIDCodes:
    codes: np.ndarray  # [n_items, L] int64
    widths: list[int]  # codebook size per level
    codebooks: list[np.ndarray] = field(default_factory=list)
    recon_error: float | None = None  # mean squared error of the reconstruction, where defined
    info: dict[str, Any] = field(default_factory=dict)


class Tokenizer:
    name = ""
    uses_collaborative = False  # True: `fit(x, collaborative)` also reads collaborative item embeddings
    revision = 0  # raised when a change of the code changes the codes the same options give (a new cache key)

    def __init__(self, levels: int = 3, width: int = 256, seed: int = 0, **options: Any):
        if levels < 1 or width < 2:
            raise ConfigError(f"tokenizer needs levels >= 1 and width >= 2, got {levels} x {width}")
        self.levels, self.width, self.seed, self.options = levels, width, seed, options

    def identity(self) -> dict[str, Any]:
        """What makes two fits the same fit (the SID cache's key): the options, and the algorithm's revision once
        its code has changed what the same options compute."""
        revision = {"revision": self.revision} if self.revision else {}
        return {"tokenizer": self.name, "levels": self.levels, "width": self.width, "seed": self.seed, **self.options,
                **revision}

    def fit(self, x: np.ndarray) -> SIDCodes:
        raise NotImplementedError


def kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 1, max_iter: int = 100):
    from sklearn.cluster import KMeans
    k = max(1, min(k, len(np.unique(x, axis=0))))
    model = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, random_state=seed)
    labels = model.fit_predict(x)
    return labels.astype(np.int64), model.cluster_centers_.astype(np.float32)


@tokenizer("rkmeans")
class ResidualKMeans(Tokenizer):
    def __init__(self, levels=3, width=256, seed=0, normalize_residuals: bool = True, max_iter: int = 100):
        super().__init__(levels, width, seed, normalize_residuals=normalize_residuals, max_iter=max_iter)

    def fit(self, x):
        residual = x.astype(np.float32).copy()
        recon = np.zeros_like(residual)
        codes, books = [], []
        for level in range(self.levels):
            if self.options["normalize_residuals"]:
                # GRID: each level clusters L2-normalised residuals; the scale is kept for reconstruction.
                scale = np.linalg.norm(residual, axis=1, keepdims=True).clip(min=1e-12)
                target = residual / scale
            else:
                scale, target = np.ones((len(residual), 1), np.float32), residual
            labels, centers = kmeans(target, self.width, self.seed + level, max_iter=self.options["max_iter"])
            step = centers[labels] * scale
            recon += step
            residual = residual - step
            codes.append(labels)
            books.append(centers)
        error = float(((x - recon) ** 2).sum(axis=1).mean())
        return SIDCodes(np.stack(codes, 1), [self.width] * self.levels, books, error)


class ResidualQuantizer(nn.Module):
    """L codebooks quantising successive residuals; straight-through gradients; dead codes restarted on demand."""

    def __init__(self, levels: int, width: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(width, dim) * 0.01) for _ in range(levels)])

    @torch.no_grad()
    def init_kmeans(self, z: torch.Tensor, seed: int) -> None:
        residual = z.clone()
        for level, book in enumerate(self.codebooks):
            labels, centers = kmeans(residual.cpu().numpy(), book.shape[0], seed + level)
            filled = torch.as_tensor(centers)
            if len(filled) < book.shape[0]:  # fewer distinct points than codes: pad with jittered copies
                extra = filled[torch.randint(len(filled), (book.shape[0] - len(filled),))]
                filled = torch.cat([filled, extra + 1e-3 * torch.randn_like(extra)])
            book.copy_(filled)
            residual -= book[torch.as_tensor(labels)]

    def forward(self, z: torch.Tensor):
        residual, quantized = z, torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        for book in self.codebooks:
            idx = torch.cdist(residual, book).argmin(dim=1)
            q = book[idx]
            loss = loss + ((residual.detach() - q) ** 2).sum(-1).mean() + \
                self.beta * ((residual - q.detach()) ** 2).sum(-1).mean()
            quantized = quantized + q
            residual = residual - q.detach()
            codes.append(idx)
        z_q = z + (quantized - z).detach()  # straight-through estimator
        return z_q, torch.stack(codes, 1), loss

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, codes: torch.Tensor, generator: torch.Generator) -> int:
        """Re-seed codes that no item uses with random residuals of this batch. Returns how many were restarted."""
        restarted, residual = 0, z.clone()
        for level, book in enumerate(self.codebooks):
            used = torch.bincount(codes[:, level], minlength=book.shape[0]) > 0
            dead = (~used).nonzero().flatten()
            if len(dead):
                pick = torch.randint(len(residual), (len(dead),), generator=generator)
                book[dead] = residual[pick] + 1e-3 * torch.randn(len(dead), book.shape[1], generator=generator)
                restarted += len(dead)
            residual -= book[codes[:, level]]
        return restarted


QUANTIZER_OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}
KMEANS_INITS = ("all", "first-batch")


@own_rng
def _train_quantizer(x: np.ndarray, model: nn.Module, quantizer: ResidualQuantizer, encode, decode, epochs: int,
                     lr: float, batch_size: int, seed: int, restart_every: int, optimizer: str = "adam",
                     kmeans_init: str = "all") -> tuple[np.ndarray, float]:
    """`kmeans_init`: the codebooks start from residual k-means of all items' latents (`all`) or of the first
    training batch's only (`first-batch`, as TIGER §4.1 words it; the same when the catalogue fits in one batch)."""
    if optimizer not in QUANTIZER_OPTIMIZERS:
        raise ConfigError(f"tokenizer optimizer {optimizer!r}: use one of {', '.join(QUANTIZER_OPTIMIZERS)}")
    if kmeans_init not in KMEANS_INITS:
        raise ConfigError(f"kmeans_init {kmeans_init!r}: use one of {', '.join(KMEANS_INITS)}")
    torch.manual_seed(seed)
    data = torch.as_tensor(x, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator)  # epoch 1's order (k-means draws nothing from generator)
    with torch.no_grad():
        quantizer.init_kmeans(encode(data if kmeans_init == "all" else data[order[:batch_size]]), seed)
    optim = QUANTIZER_OPTIMIZERS[optimizer](model.parameters(), lr=lr)
    for epoch in range(epochs):
        if epoch:
            order = torch.randperm(len(data), generator=generator)
        for idx in order.split(batch_size):
            batch = data[idx]
            z = encode(batch)
            z_q, _, vq_loss = quantizer(z)
            loss = ((decode(z_q) - batch) ** 2).sum(-1).mean() + vq_loss
            optim.zero_grad()
            loss.backward()
            optim.step()
        if restart_every and (epoch + 1) % restart_every == 0 and epoch + 1 < epochs:
            with torch.no_grad():
                z = encode(data)
                _, codes, _ = quantizer(z)
                quantizer.restart_dead(z, codes, generator)
    with torch.no_grad():
        z = encode(data)
        z_q, codes, _ = quantizer(z)
        error = float(((decode(z_q) - data) ** 2).sum(-1).mean())
    return codes.numpy().astype(np.int64), error


@tokenizer("rvq")
class ResidualVQ(Tokenizer):
    def __init__(self, levels=3, width=256, seed=0, beta: float = 0.25, epochs: int = 50, lr: float = 1e-3,
                 batch_size: int = 1024, restart_every: int = 10):
        super().__init__(levels, width, seed, beta=beta, epochs=epochs, lr=lr, batch_size=batch_size,
                         restart_every=restart_every)

    @own_rng
    def fit(self, x):
        torch.manual_seed(self.seed)
        quantizer = ResidualQuantizer(self.levels, self.width, x.shape[1], self.options["beta"])
        identity = lambda t: t  # noqa: E731  (R-VQ quantises the embedding itself)
        codes, error = _train_quantizer(x, quantizer, quantizer, identity, identity, self.options["epochs"],
                                        self.options["lr"], self.options["batch_size"], self.seed,
                                        self.options["restart_every"])
        books = [b.detach().numpy() for b in quantizer.codebooks]
        return SIDCodes(codes, [self.width] * self.levels, books, error)


def standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per dimension. An RQ-VAE on small-valued inputs (L2-normalised text vectors, a SASRec
    table whose rare items barely moved) has too weak a reconstruction term to stop the encoder from collapsing
    every item onto a few codes."""
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAEModel(nn.Module):
    def __init__(self, dim: int, hidden: list[int], latent: int, levels: int, width: int, beta: float):
        super().__init__()
        self.encoder = mlp([dim, *hidden, latent])
        self.decoder = mlp([latent, *reversed(hidden), dim])
        self.quantizer = ResidualQuantizer(levels, width, latent, beta)


@tokenizer("rqvae")
class RQVAE(Tokenizer):
    """TIGER's RQ-VAE. `standardize=true` trains on inputs standardised per dimension (`standardise`), as the
    reproductions that reach TIGER's numbers do (cornac's PAISCHER recipe: `feature_standardize=True`; GRID whitens
    its RQ-VAE inputs); the reconstruction error is then in standardised units. Off by default, so that every other
    use keeps its codes (on TF-IDF-SVD vectors it gave more collisions, not fewer); TIGER's config turns it on.
    `epochs` passes over the items (TIGER: 20k; 100 by default here), `optimizer` adam | adagrad (TIGER: Adagrad,
    lr 0.4), `kmeans_init` all | first-batch (see `_train_quantizer`). The defaults give the codes they gave before
    these options existed."""

    def __init__(self, levels=3, width=256, seed=0, hidden: list[int] | None = None, latent: int = 32,
                 beta: float = 0.25, epochs: int = 100, lr: float = 1e-3, batch_size: int = 1024,
                 restart_every: int = 10, standardize: bool = False, optimizer: str = "adam",
                 kmeans_init: str = "all"):
        super().__init__(levels, width, seed, hidden=list(hidden or [512, 256, 128]), latent=latent, beta=beta,
                         epochs=epochs, lr=lr, batch_size=batch_size, restart_every=restart_every,
                         standardize=bool(standardize), optimizer=optimizer, kmeans_init=kmeans_init)

    @own_rng
    def fit(self, x):
        torch.manual_seed(self.seed)
        o = self.options
        if o["standardize"]:
            x = standardise(np.asarray(x, dtype=np.float32))
        model = RQVAEModel(x.shape[1], o["hidden"], o["latent"], self.levels, self.width, o["beta"])
        codes, error = _train_quantizer(x, model, model.quantizer, model.encoder, model.decoder, o["epochs"], o["lr"],
                                        o["batch_size"], self.seed, o["restart_every"], o["optimizer"],
                                        o["kmeans_init"])
        books = [b.detach().numpy() for b in model.quantizer.codebooks]
        return SIDCodes(codes, [self.width] * self.levels, books, error)


def balanced_assign(x: np.ndarray, centers: np.ndarray, capacity: int) -> np.ndarray:
    """Assign points to their nearest centre with at most `capacity` points per centre (most confident first)."""
    dist = (x ** 2).sum(1)[:, None] - 2 * x @ centers.T + (centers ** 2).sum(1)[None, :]
    order = np.argsort(dist, axis=1)
    margin = np.sort(dist, axis=1)
    priority = np.argsort(margin[:, 0] - (margin[:, 1] if dist.shape[1] > 1 else 0.0))
    load = np.zeros(len(centers), dtype=np.int64)
    labels = np.empty(len(x), dtype=np.int64)
    for i in priority:
        for c in order[i]:
            if load[c] < capacity:
                labels[i] = c
                load[c] += 1
                break
    return labels


_TOKEN = re.compile(r"<[^_>]*_(\d+)>")


@tokenizer("index-file")
class IndexFile(Tokenizer):
    """LC-Rec / LETTER `*.index.json`: {"0": ["<a_12>", "<b_3>", "<c_200>"], ...}, keyed by the item's position in
    the dataset's files. `order` (the provider passes the item table's `source_index`) maps catalogue item i to its
    key; without it, item i's key is i."""

    def __init__(self, levels=0, width=0, seed=0, path: str = "", order: list[int] | None = None):
        self.levels, self.width, self.seed = levels, width, seed
        self.options = {"path": path, "order": None if order is None else [int(o) for o in order]}

    def identity(self):
        path = Path(self.options["path"])
        order = self.options["order"]
        return {"tokenizer": self.name, "path": str(path.resolve()),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None,
                "order": None if order is None else hashlib.sha256(json.dumps(order).encode()).hexdigest()}

    def fit(self, x):
        path = Path(self.options["path"])
        if not path.exists():
            raise HarnessError(f"SID index file not found: {path}")
        index = json.loads(path.read_text())
        n = len(x)
        rows = []
        order = self.options["order"] or range(n)
        for item in range(n):
            tokens = index.get(str(order[item]))
            if tokens is None:
                raise HarnessError(f"{path} has no SID for item {item} (catalogue has {n} items)")
            parsed = [_TOKEN.fullmatch(t) for t in tokens]
            if not all(parsed):
                raise HarnessError(f"{path}: item {item} has tokens {tokens}; expected the form <a_12>")
            rows.append([int(m.group(1)) for m in parsed])
        if len({len(r) for r in rows}) != 1:
            raise HarnessError(f"{path}: items have SIDs of different lengths")
        codes = np.array(rows, dtype=np.int64)
        return SIDCodes(codes, [int(c) + 1 for c in codes.max(axis=0)], [], None, {"path": str(path)})


def make_tokenizer(name: str, **options: Any) -> Tokenizer:
    return TOKENIZERS.make(name, **options)
