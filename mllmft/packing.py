"""Padding-free batches: a training batch's samples packed end to end into rows, no padding between them.

Caption and VQA samples are short and vary in length, so a padded batch [B, longest] is much padding, and
every layer computes on it. Packed, the samples of a (right-padded) batch are laid end to end, in order,
into rows of at most ``capacity`` tokens (next-fit: a sample that does not fit starts the next row; one
longer than the capacity has a row of its own), and the rows padded to the longest row only. The default
capacity is the padded batch's own length, so a packed batch is fewer rows of at most that length, never
more work: SDPA and eager attend over each row's whole square under the mask (measured on the CPU: rows of
2,048 tokens holding three 605-token samples cost 3.6× the padded step), where flash attention's
variable-length kernel costs each sample's own square only, so on a GPU with ``flash_attention_2`` a larger
``module.pack_tokens`` packs more. Each token
keeps the position id it had in its own sample, and the attention mask is left out: transformers then
reads the samples' boundaries from where the position ids restart and builds a block-diagonal causal
mask (SDPA and eager, exact on any device) or runs flash attention's variable-length kernel — a token
never sees another sample's. The images stay in the order of their tokens, which is how every family
places image features, so no image input changes. The labels move with their tokens: a sample's first
token is always prompt, so no prediction crosses a boundary, and the answer tokens come in the padded
batch's order (``mllmft.answer_logits`` returns them in that order either way).

The position ids are the family's: 0, 1, 2... per sample for 1-D RoPE (the LLaVA family, InternVL and
Idefics3/SmolVLM), Qwen-VL's 3-D mRoPE ids as its own ``get_rope_index`` computes them on the padded
batch, with the text positions put first (transformers' packed form, [4, rows, length]). A family whose
attention cannot take it (a prefix-LM mask, learned absolute positions) says why and is refused at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mllmft.checks import check_bool, check_number
from mllmft.data.collate import IGNORE_INDEX
from mllmft.errors import ConfigError

# a family's position ids for packing: (model, padded inputs) -> [B, T], or [3, B, T] for mRoPE
PositionIds = Callable[[nn.Module, dict], torch.Tensor]


def check_packing(packing: bool, pack_tokens: int | None, family, strategy) -> None:
    """``module.packing`` refused at start-up where the family's attention or the strategy cannot take it."""
    check_bool("module.packing", packing)
    if not packing:
        return
    if pack_tokens is not None:
        check_number("module.pack_tokens", pack_tokens, 1, integer=True)
    if family.packing_positions is None:
        raise ConfigError(f"module.packing=true does not work with the {family.name} family: {family.no_packing_why}")
    if strategy.unpacked_only:
        raise ConfigError(f"module.packing=true does not work with strategy={strategy.name}: {strategy.unpacked_only}")


def text_positions(model: nn.Module, inputs: dict) -> torch.Tensor:
    """0, 1, 2... in each sample (right padding: the padding gets positions past the sample's end)."""
    ids = inputs["input_ids"]
    return torch.arange(ids.shape[1], device=ids.device).expand_as(ids)


def mrope_positions(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Qwen-VL's 3-D (temporal, height, width) position ids, [3, B, T], from the model's own rule."""
    owner: Any = next(m for m in model.modules() if hasattr(m, "get_rope_index"))
    keys = ("image_grid_thw", "video_grid_thw", "mm_token_type_ids", "attention_mask")
    positions, _ = owner.get_rope_index(inputs["input_ids"], **{k: inputs[k] for k in keys if k in inputs})
    return positions


def rows_of(lengths: list[int], capacity: int) -> list[list[int]]:
    """The samples of each row, in order: next-fit into rows of ``capacity`` tokens."""
    rows: list[list[int]] = []
    used = capacity
    for sample, n in enumerate(lengths):
        if used + n > capacity:
            rows.append([])
            used = 0
        rows[-1].append(sample)
        used += n
    return rows


def pack(inputs: dict, labels: torch.Tensor, capacity: int | None, positions: PositionIds, model: nn.Module):
    """(packed inputs, packed labels) of a right-padded training batch, in rows of ``capacity`` tokens (None:
    the batch's padded length); inputs of one token per position ([B, T]: ids, token types) are packed, the
    images' inputs kept as they are, the attention mask left out."""
    ids = inputs["input_ids"]
    batch, length = ids.shape
    capacity = capacity or length
    lengths = inputs["attention_mask"].sum(1).tolist()
    sample_positions = positions(model, inputs)
    per_token = {k: v for k, v in inputs.items() if torch.is_tensor(v) and v.shape[:2] == (batch, length)}
    per_token.pop("attention_mask")
    per_token["labels"] = labels
    rows = rows_of(lengths, capacity)
    longest = max(sum(lengths[s] for s in row) for row in rows)
    pad_id = _pad_id(ids, inputs["attention_mask"])
    packed = {k: v.new_full((len(rows), longest), IGNORE_INDEX if k == "labels" else 0) for k, v in per_token.items()}
    packed["input_ids"].fill_(pad_id)
    multi = sample_positions.dim() == 3  # mRoPE: [3, B, T]
    position_ids = ids.new_zeros((4 if multi else 1, len(rows), longest))
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            n = lengths[s]
            for key, value in per_token.items():
                packed[key][r, at : at + n] = value[s, :n]
            if multi:  # the text positions first, then the model's own
                position_ids[0, r, at : at + n] = torch.arange(n)
                position_ids[1:, r, at : at + n] = sample_positions[:, s, :n]
            else:
                position_ids[0, r, at : at + n] = sample_positions[s, :n]
            at += n
        position_ids[:, r, at:] = torch.arange(longest - at)  # the padding: one more "sample" of its own
    out_labels = packed.pop("labels")
    others = {k: v for k, v in inputs.items() if k not in per_token and k != "attention_mask"}
    # no KV cache: with one, transformers would not read the boundaries from the position ids
    packed_inputs = {**others, **packed, "position_ids": position_ids if multi else position_ids[0], "use_cache": False}
    return packed_inputs, out_labels


def batch_tokens(batch: dict) -> int:
    """A training batch's tokens but padding: counted before packing (a packed batch has no attention mask)."""
    return batch["tokens"] if "tokens" in batch else int(batch["model_inputs"]["attention_mask"].sum())


def _pad_id(ids: torch.Tensor, mask: torch.Tensor) -> int:
    padding = ids[mask == 0]
    return int(padding[0]) if padding.numel() else 0
