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


    def unbiased_subset(self, num: int | None, seed: int) -> torch.Tensor:
        """Indices of a seeded stratified sample of ``num`` items (sorted) in which every item has
        inclusion probability exactly ``num / total``, whatever ``num`` and the class sizes.

        Class c's exact quota num * N_c / total is floor + r_c / total (integers). The fixed
        largest-remainder quotas of ``subset`` give the same classes the extra items every time,
        which reweights classes; here the leftover items go by systematic sampling over the
        remainders laid out in a seeded random class order, so class c gets one extra item with
        probability exactly r_c / total (``randomised_quotas``), its expected quota is
        num * N_c / total, and each of its N_c members, drawn uniformly, is in with probability
        num / total. Pool selection keeps ``subset``: only per-trial subsets need this."""
        if num is None or num >= self.total:
            return torch.arange(self.total)
        if num < 0:
            raise ValueError(f"subset size must be >= 0, got {num}")
        gen = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(self.members), generator=gen).tolist()
        start = int(torch.randint(self.total, (1,), generator=gen))
        quotas = randomised_quotas(self.counts.tolist(), num, order, start)
        chosen = [members[torch.randperm(len(members), generator=gen)[:q]]
                  for members, q in zip(self.members, quotas)]
        return torch.sort(torch.cat(chosen)).values


def randomised_quotas(counts: list[int], num: int, order: list[int], start: int) -> list[int]:
    """Per-class quotas summing to ``num``: floors of num * N_c / total, plus one for the classes hit by
    the systematic points start, start + total, start + 2 total, ... on the remainders
    r_c = num * N_c mod total laid end to end in ``order``. Integer arithmetic, so exact: with
    ``start`` uniform on 0 .. total - 1 a remainder interval of length r_c < total holds one point
    for exactly r_c of the total starts, i.e. P(extra) = r_c / total."""
    total = sum(counts)
    quotas = [num * n // total for n in counts]
    edge = 0
    for c in order:
        remainder = num * counts[c] % total
        # points k * total + start in [edge, edge + remainder): at most one, as remainder < total
        first = edge + (start - edge) % total
        quotas[c] += first < edge + remainder
        edge += remainder
    return quotas


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
