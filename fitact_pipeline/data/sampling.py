"""Seeded, class-stratified subsets (DESIGN.md §2.5): never the first N images, because ImageFolder
trees list images class by class."""
from __future__ import annotations

import torch


def stratified_subset(labels: torch.Tensor, num: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random sample of ``num`` items with class proportions kept (sorted).

    Per-class quotas use largest remainders, so the quotas sum to exactly ``num``.
    """
    total = len(labels)
    if num is None or num >= total:
        return torch.arange(total)
    if num < 0:
        raise ValueError(f"subset size must be >= 0, got {num}")
    gen = torch.Generator().manual_seed(int(seed))
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * num / total
    quota = exact.floor().long()
    # Hand the leftover items to the classes with the largest fractional parts (ties: class order).
    leftover = num - int(quota.sum())
    order = torch.argsort(exact - quota, descending=True, stable=True)
    quota[order[:leftover]] += 1
    chosen = []
    for cls, q in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[:q]])
    return torch.sort(torch.cat(chosen)).values


def split_off(labels: torch.Tensor, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve a stratified seeded sample of ``num`` items: returns (rest, carved) index tensors."""
    carved = stratified_subset(labels, num, seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[carved] = False
    return torch.nonzero(mask).flatten(), carved
