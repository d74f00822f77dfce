"""Residual quantisation with addressing decoupled from expression (DIG §3.2).

- codebooks c_{l,k}: addressing only; s_l = argmin_k ||r_{l-1} - c_{l,k}||, r_l = r_{l-1} - c_{l,s_l}; updated by
  EMA toward the mean residual assigned to each code in the batch, never by gradients;
- SID embeddings e^sid_{l,k}: expression only; learned by the loss; prefix e_sid^(1:l) = Σ_{i≤l} e^sid_{i,s_i}.

The codebooks are those of the balanced k-means tree that starts them: level l holds one codebook per SID prefix
s_1..s_{l-1} (a tree's codes are numbered within their parent), and the argmin of a level runs over the children of
the item's prefix. One codebook per level shared by every prefix cannot hold a tree's codes: the mean residual of "code
k" then pools unrelated clusters, and the first re-assignment scrambles the SIDs. A quantizer never given a tree
(one codebook row per level, its initial state) is the shared-codebook RQ of eq. 2–3 literally.
The per-item codes live in a table (a buffer), so a training state carries its SIDs with it.
"""
from __future__ import annotations

import torch
from torch import nn


class AddressingQuantizer(nn.Module):
    def __init__(self, levels: int, width: int, dim: int, decay: float = 0.99):
        super().__init__()
        self.levels, self.width, self.dim, self.decay = levels, width, dim, decay
        # per level: books [P_l, W, d] (P_l prefixes), which entries exist, and each entry's row at the next level
        for level in range(levels):
            self._set_level(level, torch.zeros(1, width, dim), torch.ones(1, width, dtype=torch.bool),
                            torch.zeros(1, width, dtype=torch.long))
        self.sid_embeddings = nn.Parameter(torch.randn(levels, width, dim) * 0.05)

    def _set_level(self, level: int, books: torch.Tensor, valid: torch.Tensor, child: torch.Tensor) -> None:
        self.register_buffer(f"books_{level}", books)
        self.register_buffer(f"valid_{level}", valid)
        self.register_buffer(f"child_{level}", child)

    def books(self, level: int) -> torch.Tensor:
        return getattr(self, f"books_{level}")

    def _rows(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Each item's codebook row (its prefix) at every level, from its codes."""
        rows = [torch.zeros(len(codes), dtype=torch.long, device=codes.device)]
        for level in range(self.levels - 1):
            rows.append(getattr(self, f"child_{level}")[rows[-1], codes[:, level]])
        return rows

    def centres(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """c_{l,s_l} of each item at every level."""
        return [self.books(level)[row, codes[:, level]] for level, row in enumerate(self._rows(codes))]

    @torch.no_grad()
    def init_from_codes(self, e: torch.Tensor, codes: torch.Tensor) -> None:
        """The tree of the given codes, its codebooks the mean residual of each (prefix, code)."""
        residual = e.detach().clone()
        row = torch.zeros(len(codes), dtype=torch.long, device=e.device)
        for level in range(self.levels):
            n_rows = int(row.max()) + 1 if len(row) else 1
            entry = row * self.width + codes[:, level]
            sums = torch.zeros(n_rows * self.width, e.shape[1], device=e.device).index_add_(0, entry, residual)
            counts = torch.bincount(entry, minlength=n_rows * self.width)
            books = (sums / counts.clamp(min=1)[:, None]).view(n_rows, self.width, -1)
            valid = (counts > 0).view(n_rows, self.width)
            # the next level's row of each existing (prefix, code): its rank among the existing entries
            child = torch.where(valid.view(-1), valid.view(-1).long().cumsum(0) - 1, 0).view(n_rows, self.width)
            self._set_level(level, books, valid, child)
            residual -= books[row, codes[:, level]]
            row = child[row, codes[:, level]]

    def residuals(self, e: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """[r_0, …, r_{L-1}]: the residual entering each level under the given codes (gradient flows to e)."""
        out, residual = [], e
        for centre in self.centres(codes):
            out.append(residual)
            residual = residual - centre
        return out

    @torch.no_grad()
    def assign(self, e: torch.Tensor) -> torch.Tensor:
        """Greedy residual argmin codes [N, L] (eq. 2–3), each level among the children of the item's prefix."""
        codes, residual = [], e.detach()
        row = torch.zeros(len(e), dtype=torch.long, device=e.device)
        for level in range(self.levels):
            books = self.books(level)[row]  # [N, W, d]
            dist = ((residual[:, None, :] - books) ** 2).sum(-1)
            index = dist.masked_fill(~getattr(self, f"valid_{level}")[row], float("inf")).argmin(dim=1)
            codes.append(index)
            residual = residual - books[torch.arange(len(e), device=e.device), index]
            row = getattr(self, f"child_{level}")[row, index]
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def ema_update(self, e: torch.Tensor, codes: torch.Tensor) -> None:
        """c_{l,k} ← α c_{l,k} + (1 − α) ē_{l,k} for every code k used in the batch (ē: its mean residual)."""
        rows = self._rows(codes)
        for level, residual in enumerate(self.residuals(e.detach(), codes)):
            books = self.books(level).view(-1, self.dim)
            entry = rows[level] * self.width + codes[:, level]
            sums = torch.zeros_like(books).index_add_(0, entry, residual.to(books.dtype))  # bf16 under autocast
            counts = torch.bincount(entry, minlength=len(books))
            used = counts > 0
            books[used] = self.decay * books[used] + (1 - self.decay) * sums[used] / counts[used, None]

    def commit_loss(self, e: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Σ_l ||sg[c_{l,s_l}] − r_{l-1}||², averaged over items (eq. 11)."""
        total = e.new_zeros(())
        for centre, residual in zip(self.centres(codes), self.residuals(e, codes)):
            total = total + ((centre.detach() - residual) ** 2).sum(-1).mean()
        return total

    def sem_loss(self, e: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """||e_v − Σ_l c_{l,s_l}||², averaged over items (eq. 12)."""
        recon = sum(self.centres(codes))
        return ((e - recon.detach()) ** 2).sum(-1).mean()

    def prefix_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        """[N, l, d]: e_sid^(1:i) for i = 1..l, from codes [N, l] of any depth l ≤ L (eq. 5)."""
        levels = torch.arange(codes.shape[1], device=codes.device)
        return self.sid_embeddings[levels[None, :], codes].cumsum(dim=1)
