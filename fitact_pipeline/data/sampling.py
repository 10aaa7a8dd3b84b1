"""Seeded, class-stratified subsets (DESIGN.md §2.5): never the first N images, because ImageFolder
trees list images class by class."""
from __future__ import annotations

import torch


class StratifiedSampler:
    """Seeded class-stratified subsets of one label vector. The classes, their members and the
    quotas per subset size are computed once: a nested campaign draws a subset per trial, and
    recomputing them cost more than the draw (docs/campaigns.md, "Several maps per pass")."""

    def __init__(self, labels: torch.Tensor):
        self.total = len(labels)
        classes, self.counts = torch.unique(labels, return_counts=True)
        self.members = [torch.nonzero(labels == cls).flatten() for cls in classes.tolist()]
        self._quotas: dict[int, list[int]] = {}

    def quotas(self, num: int) -> list[int]:
        """Per-class sizes of a subset of ``num``: largest remainders, so they sum to exactly ``num``."""
        if num not in self._quotas:
            exact = self.counts.double() * num / self.total
            quota = exact.floor().long()
            # Hand the leftover items to the classes with the largest fractional parts (ties: class order).
            leftover = num - int(quota.sum())
            order = torch.argsort(exact - quota, descending=True, stable=True)
            quota[order[:leftover]] += 1
            self._quotas[num] = quota.tolist()
        return self._quotas[num]

    def subset(self, num: int | None, seed: int) -> torch.Tensor:
        """Indices of a seeded random sample of ``num`` items with class proportions kept (sorted)."""
        if num is None or num >= self.total:
            return torch.arange(self.total)
        if num < 0:
            raise ValueError(f"subset size must be >= 0, got {num}")
        gen = torch.Generator().manual_seed(int(seed))
        chosen = [members[torch.randperm(len(members), generator=gen)[:q]]
                  for members, q in zip(self.members, self.quotas(num))]
        return torch.sort(torch.cat(chosen)).values


def stratified_subset(labels: torch.Tensor, num: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random sample of ``num`` items with class proportions kept (sorted).

    Per-class quotas use largest remainders, so the quotas sum to exactly ``num``.
    """
    return StratifiedSampler(labels).subset(num, seed)


def split_off(labels: torch.Tensor, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve a stratified seeded sample of ``num`` items: returns (rest, carved) index tensors."""
    carved = stratified_subset(labels, num, seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[carved] = False
    return torch.nonzero(mask).flatten(), carved
