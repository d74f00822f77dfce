"""Residual quantisation with addressing decoupled from expression (DIG §3.2).

- codebooks c_{l,k}: addressing only; s_l = argmin_k ||r_{l-1} - c_{l,k}||, r_l = r_{l-1} - c_{l,s_l}; updated by
  EMA toward the mean residual assigned to each code in the batch, never by gradients;
- SID embeddings e^sid_{l,k}: expression only; learned by the loss; prefix e_sid^(1:l) = Σ_{i≤l} e^sid_{i,s_i}.
The per-item codes live in a table (a buffer), so a training state carries its SIDs with it.
"""
from __future__ import annotations

import torch
from torch import nn


class AddressingQuantizer(nn.Module):
    def __init__(self, levels: int, width: int, dim: int, decay: float = 0.99):
        super().__init__()
        self.levels, self.width, self.decay = levels, width, decay
        self.register_buffer("codebooks", torch.zeros(levels, width, dim))
        self.sid_embeddings = nn.Parameter(torch.randn(levels, width, dim) * 0.05)

    @torch.no_grad()
    def init_from_codes(self, e: torch.Tensor, codes: torch.Tensor) -> None:
        """Codebooks consistent with given codes (e.g. a balanced k-means tree): c_{l,k} = mean residual with code k."""
        residual = e.detach().clone()
        for level in range(self.levels):
            sums = torch.zeros(self.width, e.shape[1], device=e.device).index_add_(0, codes[:, level], residual)
            counts = torch.bincount(codes[:, level], minlength=self.width).clamp(min=1)
            self.codebooks[level] = sums / counts[:, None]
            residual -= self.codebooks[level, codes[:, level]]

    def residuals(self, e: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """[r_0, …, r_{L-1}]: the residual entering each level under the given codes (gradient flows to e)."""
        out, residual = [], e
        for level in range(self.levels):
            out.append(residual)
            residual = residual - self.codebooks[level, codes[:, level]]
        return out

    @torch.no_grad()
    def assign(self, e: torch.Tensor) -> torch.Tensor:
        """Greedy residual argmin codes [N, L] (eq. 2–3)."""
        codes, residual = [], e.detach()
        for level in range(self.levels):
            index = torch.cdist(residual, self.codebooks[level]).argmin(dim=1)
            codes.append(index)
            residual = residual - self.codebooks[level, index]
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def ema_update(self, e: torch.Tensor, codes: torch.Tensor) -> None:
        """c_{l,k} ← α c_{l,k} + (1 − α) ē_{l,k} for every code k used in the batch (ē: its mean residual)."""
        for level, residual in enumerate(self.residuals(e.detach(), codes)):
            index = codes[:, level]
            sums = torch.zeros_like(self.codebooks[level]).index_add_(0, index, residual)
            counts = torch.bincount(index, minlength=self.width)
            used = counts > 0
            mean = sums[used] / counts[used, None]
            self.codebooks[level, used] = self.decay * self.codebooks[level, used] + (1 - self.decay) * mean

    def commit_loss(self, e: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Σ_l ||sg[c_{l,s_l}] − r_{l-1}||², averaged over items (eq. 11)."""
        total = e.new_zeros(())
        for level, residual in enumerate(self.residuals(e, codes)):
            total = total + ((self.codebooks[level, codes[:, level]].detach() - residual) ** 2).sum(-1).mean()
        return total

    def sem_loss(self, e: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """||e_v − Σ_l c_{l,s_l}||², averaged over items (eq. 12)."""
        recon = sum(self.codebooks[level, codes[:, level]] for level in range(self.levels))
        return ((e - recon.detach()) ** 2).sum(-1).mean()

    def prefix_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        """[N, l, d]: e_sid^(1:i) for i = 1..l, from codes [N, l] of any depth l ≤ L (eq. 5)."""
        levels = torch.arange(codes.shape[1], device=codes.device)
        return self.sid_embeddings[levels[None, :], codes].cumsum(dim=1)
