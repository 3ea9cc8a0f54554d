"""Per-tensor statistics of tensors split across ranks, from a few reduced scalars per tensor.

Every function takes the fragments' local values (1-D, one per tensor) and reduces through the
engine; with an unsharded engine the same code runs on whole tensors. Sums are taken in float64 and
rounded to float32 once, so the statistic a sharded run computes is the one a single process
computes on the whole tensor (the sums differ only in their order, far below float32's precision),
and the elementwise work that follows is bit for bit the same.
"""

from __future__ import annotations

import math

import torch

FLOAT32_INF_BITS = 0x7F800000  # the bit pattern of +inf: non-negative floats order as their bits do
# entries converted to float64 at a time on the CPU: a float64 copy of a whole tensor (and its page
# faults) costs several times the sums themselves; on an accelerator one pass over the tensor is cheaper
CPU_CHUNK = 1 << 18
# entries drawn (at fixed positions per size) to bracket a k-th largest value on the CPU
BRACKET_SAMPLE = 1 << 14


def float64_sums(v: torch.Tensor, squares: bool = True) -> torch.Tensor:
    """(Σ v, Σ v²) of a 1-D tensor accumulated in float64, or Σ v alone with ``squares=False``
    (a bool tensor's count, exactly)."""
    if v.dtype == torch.bool:
        count = torch.count_nonzero(v).double()
        return torch.stack([count, count]) if squares else count
    chunk = CPU_CHUNK if v.device.type == "cpu" else max(1, v.numel())
    parts = [part.double() for part in v.split(chunk)] or [v.new_zeros(1, dtype=torch.float64)]
    if not squares:
        return torch.stack([d.sum() for d in parts]).sum()
    return torch.stack([torch.stack([d.sum(), torch.dot(d, d)]) for d in parts]).sum(0)


def moments(engine, values: list[torch.Tensor], numels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased std) of each whole tensor, float32, one per tensor (std 0 for one element)."""
    device = device_of(values)
    sums = torch.stack([float64_sums(v) for v in values]) if values else torch.zeros(0, 2, dtype=torch.float64)
    engine.all_reduce(sums)
    n = torch.tensor(numels, dtype=torch.float64, device=device)
    mean = sums[:, 0] / n
    var = ((sums[:, 1] - sums[:, 0] * mean) / (n - 1).clamp(min=1)).clamp(min=0)
    return mean.float(), var.sqrt().float()


def totals(engine, values: list[torch.Tensor]) -> torch.Tensor:
    """Σ of each whole tensor (float64; a bool tensor's count), one per tensor."""
    if not values:
        return torch.zeros(0, dtype=torch.float64)
    return engine.all_reduce(torch.stack([float64_sums(v, squares=False) for v in values]))


def top_k_masks(engine, scores: list[torch.Tensor], ks: list[int]) -> list[torch.Tensor]:
    """For each tensor (non-negative scores, this rank's part of it), True on exactly k of the whole
    tensor's entries: those above its k-th largest value, then as many tied at that value as are
    needed, taken in flat-index order across ranks. The same entries on any number of ranks."""
    thresholds = kth_largest(engine, scores, ks)
    masks = [s >= t for s, t in zip(scores, thresholds)]  # above, and every tie, for now
    tied = torch.stack([torch.count_nonzero(s == t) for s, t in zip(scores, thresholds)]).to(torch.int64)
    at_least = torch.stack([torch.count_nonzero(m) for m in masks]).to(torch.int64)
    counts = torch.stack([at_least - tied, tied], dim=1)  # (above, tied) on this rank
    before = _ties_on_lower_ranks(engine, tied)
    engine.all_reduce(counts)
    missing = (torch.tensor(ks) - counts[:, 0].cpu()).tolist()
    for s, t, m, short, earlier, mine in zip(scores, thresholds, masks, missing, before.tolist(), tied.tolist()):
        take = max(0, min(short - earlier, mine))
        if take < mine:  # more ties than the count needs: drop the later ones (rare with real gradients)
            m[(s == t).nonzero().squeeze(1)[take:]] = False
    return masks


def kth_largest(engine, scores: list[torch.Tensor], ks: list[int]) -> list[torch.Tensor]:
    """The k-th largest value of each whole tensor of non-negative float32 scores."""
    if not engine.sharded:
        return [_kth_largest(s.float(), k) for s, k in zip(scores, ks)]
    # bisection on the bit pattern, every tensor at once: one reduced count vector per round
    device = device_of(scores)
    bits = [s.float().view(torch.int32) for s in scores]
    lo = torch.zeros(len(scores), dtype=torch.int64, device=device)
    hi = torch.full_like(lo, FLOAT32_INF_BITS)
    k = torch.tensor(ks, dtype=torch.int64, device=device)
    while bool((lo < hi).any()):
        mid = (lo + hi + 1) // 2
        count = torch.stack([torch.count_nonzero(b >= m) for b, m in zip(bits, mid)]).to(torch.int64)
        engine.all_reduce(count)
        enough = count >= k
        lo = torch.where(enough, mid, lo)
        hi = torch.where(enough, hi, mid - 1)
    return [torch.tensor(int(x), dtype=torch.int32).view(torch.float32).to(device) for x in lo.tolist()]


def _kth_largest(s: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a 1-D tensor, exactly. On the CPU a large tensor's value is first
    bracketed by the order statistics of a sample (six standard deviations of the sample quantile
    either side) and then selected among the few entries inside the bracket, which costs a few
    comparisons per entry instead of a selection over a copy of the whole tensor; if the bracket
    misses (it almost never does) the selection runs over the whole tensor."""
    n = s.numel()
    if k > n:
        return s.new_zeros(())
    if s.device.type != "cpu" or n <= 16 * BRACKET_SAMPLE:
        return s.kthvalue(n - k + 1).values
    drawn = torch.randint(n, (BRACKET_SAMPLE,), generator=torch.Generator().manual_seed(n))
    sample = s[drawn].sort().values
    share = k / n  # of the entries that lie at or above the value
    position = BRACKET_SAMPLE * (1 - share)
    margin = 6 * math.sqrt(BRACKET_SAMPLE * share * (1 - share)) + 2
    low = sample[max(0, math.floor(position - margin))]
    high = sample[min(BRACKET_SAMPLE - 1, math.ceil(position + margin))]
    needed = k - int(torch.count_nonzero(s > high))
    inside = s[(s >= low).logical_and_(s <= high)]
    if 0 < needed <= inside.numel():
        return inside.kthvalue(inside.numel() - needed + 1).values
    return s.kthvalue(n - k + 1).values


def _ties_on_lower_ranks(engine, ties: torch.Tensor) -> torch.Tensor:
    """For each tensor, the tied entries held by lower ranks (whose parts come first in flat order)."""
    if not engine.sharded:
        return torch.zeros_like(ties)
    return sum(engine.all_gather(ties)[: engine.rank()], torch.zeros_like(ties))


def device_of(tensors: list[torch.Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def lowest_entries(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """True on exactly round(ratio · numel) lowest-scoring entries of a whole tensor (any sign; ties:
    the earlier position), e.g. Model-Dowser's trainable entries."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[flat.argsort(stable=True)[: round(ratio * flat.numel())]] = True
    return mask.view_as(scores)


def highest_entries(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """True on exactly round(ratio · numel) highest-scoring entries (Model Tailor's patch, Grafting's mask)."""
    return lowest_entries(-scores, ratio)
