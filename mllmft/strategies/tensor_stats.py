"""Per-tensor statistics of tensors split across ranks, from a few reduced scalars per tensor.

Every function takes the fragments' local values (1-D, one per tensor) and reduces through the
engine; with an unsharded engine the same code runs on whole tensors. Sums are taken in float64 and
rounded to float32 once, so the statistic a sharded run computes is the one a single process
computes on the whole tensor (the sums differ only in their order, far below float32's precision),
and the elementwise work that follows is bit for bit the same.
"""

from __future__ import annotations

import torch

FLOAT32_INF_BITS = 0x7F800000  # the bit pattern of +inf: non-negative floats order as their bits do


def moments(engine, values: list[torch.Tensor], numels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased std) of each whole tensor, float32, one per tensor (std 0 for one element)."""
    device = _device(values)
    sums = torch.stack([torch.stack([v.double().sum(), v.double().square().sum()]) if v.numel()
                        else torch.zeros(2, dtype=torch.float64, device=device) for v in values])
    engine.all_reduce(sums)
    n = torch.tensor(numels, dtype=torch.float64, device=device)
    mean = sums[:, 0] / n
    var = ((sums[:, 1] - sums[:, 0] * mean) / (n - 1).clamp(min=1)).clamp(min=0)
    return mean.float(), var.sqrt().float()


def totals(engine, values: list[torch.Tensor]) -> torch.Tensor:
    """Σ of each whole tensor (float64), one per tensor."""
    device = _device(values)
    sums = torch.stack([v.double().sum() if v.numel() else torch.zeros((), dtype=torch.float64, device=device)
                        for v in values])
    return engine.all_reduce(sums)


def top_k_masks(engine, scores: list[torch.Tensor], ks: list[int]) -> list[torch.Tensor]:
    """For each tensor (non-negative scores, this rank's part of it), True on exactly k of the whole
    tensor's entries: those above its k-th largest value, then as many tied at that value as are
    needed, taken in flat-index order across ranks. The same entries on any number of ranks."""
    thresholds = kth_largest(engine, scores, ks)
    above = [s > t for s, t in zip(scores, thresholds)]
    tied = [s == t for s, t in zip(scores, thresholds)]
    counts = torch.stack([torch.stack([a.sum(), t.sum()]) for a, t in zip(above, tied)]).to(torch.int64)
    before = _ties_on_lower_ranks(engine, counts[:, 1])
    engine.all_reduce(counts)
    masks = []
    missing = (torch.tensor(ks) - counts[:, 0].cpu()).tolist()
    for a, t, short, earlier in zip(above, tied, missing, before.tolist()):
        take = max(0, min(short - earlier, int(t.sum())))
        if take:
            a[t.nonzero().squeeze(1)[:take]] = True
        masks.append(a)
    return masks


def kth_largest(engine, scores: list[torch.Tensor], ks: list[int]) -> list[torch.Tensor]:
    """The k-th largest value of each whole tensor of non-negative float32 scores."""
    if not engine.sharded:
        return [s.float().kthvalue(s.numel() - k + 1).values if k <= s.numel() else s.new_zeros(())
                for s, k in zip(scores, ks)]
    # bisection on the bit pattern, every tensor at once: one reduced count vector per round
    device = _device(scores)
    bits = [s.float().view(torch.int32) for s in scores]
    lo = torch.zeros(len(scores), dtype=torch.int64, device=device)
    hi = torch.full_like(lo, FLOAT32_INF_BITS)
    k = torch.tensor(ks, dtype=torch.int64, device=device)
    while bool((lo < hi).any()):
        mid = (lo + hi + 1) // 2
        count = torch.stack([(b >= m).sum() for b, m in zip(bits, mid)]).to(torch.int64)
        engine.all_reduce(count)
        enough = count >= k
        lo = torch.where(enough, mid, lo)
        hi = torch.where(enough, hi, mid - 1)
    return [torch.tensor(int(x), dtype=torch.int32).view(torch.float32).to(device) for x in lo.tolist()]


def _ties_on_lower_ranks(engine, ties: torch.Tensor) -> torch.Tensor:
    """For each tensor, the tied entries held by lower ranks (whose parts come first in flat order)."""
    if not engine.sharded:
        return torch.zeros_like(ties)
    return sum(engine.all_gather(ties)[:engine.rank()], torch.zeros_like(ties))


def _device(tensors: list[torch.Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def lowest_entries(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """True on exactly round(ratio · numel) lowest-scoring entries of a whole tensor (any sign; ties:
    the earlier position), e.g. Model-Dowser's trainable entries."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[flat.argsort(stable=True)[:round(ratio * flat.numel())]] = True
    return mask.view_as(scores)


def highest_entries(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """True on exactly round(ratio · numel) highest-scoring entries (Model Tailor's patch, Grafting's mask)."""
    return lowest_entries(-scores, ratio)
