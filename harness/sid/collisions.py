"""SID tables: item → SID and SID → items, under a collision strategy.

- `dedup-token` (TIGER): an extra level numbers the items that share a SID, so every SID is unique;
- `none` (vanilla GR): colliding items keep one SID; decoding it yields the whole group (in item order);
- `random-pick` (GRID's alternative): a SID resolves to one member chosen at random (seeded); the others are
  unreachable by generation, which the table reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.errors import ConfigError

STRATEGIES = ("dedup-token", "none", "random-pick")


@dataclass
class SIDTable:
    codes: np.ndarray  # [n_items, L'] the SIDs generation targets (L' = L + 1 with dedup-token)
    widths: list[int]
    strategy: str
    group_of: np.ndarray  # [n_items] id of the item's SID (row of `sids`)
    sids: np.ndarray  # [n_sids, L'] distinct SIDs
    members_offsets: np.ndarray  # CSR: items of SID g are members[offsets[g]:offsets[g+1]] (ascending item id)
    members: np.ndarray
    pick: np.ndarray | None = None  # random-pick: the item each SID resolves to
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.codes)

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    def sid_of(self, item: int) -> tuple[int, ...]:
        return tuple(int(c) for c in self.codes[item])

    def items_of_group(self, group: int) -> np.ndarray:
        if self.pick is not None:
            return self.pick[group:group + 1]
        return self.members[self.members_offsets[group]:self.members_offsets[group + 1]]

    def lookup(self, sid: tuple[int, ...] | np.ndarray) -> int:
        """Row of `sids` for a SID, or -1 if no item has it (an invalid SID)."""
        return self._index.get(tuple(int(c) for c in sid), -1)

    def items_of(self, sid: tuple[int, ...] | np.ndarray) -> np.ndarray:
        group = self.lookup(sid)
        return np.zeros(0, dtype=np.int64) if group < 0 else self.items_of_group(group)

    def __post_init__(self) -> None:
        self._index = {tuple(int(c) for c in row): g for g, row in enumerate(self.sids)}


def collision_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct SIDs, each item's SID id, and CSR members (ascending item id) of each SID."""
    sids, group_of = np.unique(codes, axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)
    order = np.argsort(group_of, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(group_of, minlength=len(sids)))])
    return sids, group_of, offsets, order


def build_table(codes: np.ndarray, widths: list[int], strategy: str = "dedup-token", seed: int = 0) -> SIDTable:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown collision strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    codes = np.asarray(codes, dtype=np.int64)
    sids, group_of, offsets, members = collision_groups(codes)
    sizes = np.diff(offsets)
    info = {"collision_groups": int((sizes > 1).sum()), "largest_group": int(sizes.max()) if len(sizes) else 0,
            "items_in_collisions": int(sizes[sizes > 1].sum())}
    if strategy == "dedup-token":
        counter = np.empty(len(codes), dtype=np.int64)
        counter[members] = np.arange(len(codes)) - np.repeat(offsets[:-1], sizes)
        codes = np.concatenate([codes, counter[:, None]], axis=1)
        widths = [*widths, int(max(1, sizes.max() if len(sizes) else 1))]
        sids, group_of, offsets, members = collision_groups(codes)
        return SIDTable(codes, widths, strategy, group_of, sids, offsets, members, info=info)
    pick = None
    if strategy == "random-pick":
        rng = np.random.default_rng(seed)
        pick = np.array([members[offsets[g] + rng.integers(sizes[g])] for g in range(len(sids))], dtype=np.int64)
        info["unreachable_items"] = int(len(codes) - len(sids))
    return SIDTable(codes, list(widths), strategy, group_of, sids, offsets, members, pick, info)
