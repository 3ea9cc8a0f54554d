"""PaliGemma's prefix/suffix encoding, in place of a chat template.

The processor puts the image tokens, BOS, the prompt and a newline in the prefix (token type 0, read
with full attention) and the answer plus EOS in the suffix (token type 1, predicted causally), and
labels exactly the suffix. Rendering the answer into the prefix text instead would let every prompt
position attend to it: the model would see what it is asked to predict.
"""

from __future__ import annotations

import torch
from PIL import Image

from mllmft.data.collate import IGNORE_INDEX, ConversationCollator
from mllmft.data.record import Record, Turn
from mllmft.errors import DataError


class PrefixSuffixCollator(ConversationCollator):
    """Collate single-turn records as prefix (prompt) + suffix (answer)."""

    def __init__(self, processor, max_length: int, generate: bool = False):
        self.processor = processor
        self.max_length = max_length
        self.generate = generate
        self.image_token_id = processor.image_token_id

    def __call__(self, items: list) -> dict:
        self._check_single_turn([record for _, record, _ in items])
        return super().__call__(items)

    def _check_single_turn(self, records: list[Record]) -> None:
        for record in records:
            if [t.role for t in record.turns] != ["user", "assistant"]:
                raise DataError(f"{record.where()}: PaliGemma models take one prompt and one answer (prefix and "
                                f"suffix); this record has {len(record.turns)} turns. Split it into single-turn "
                                "records or use a chat-template family.")

    def render(self, turns: tuple[Turn, ...], add_generation_prompt: bool) -> str:
        # the image placeholder first: the processor expands it to image_seq_length tokens + BOS
        return self.processor.image_token + turns[0].text

    def token_lengths(self, records: list[Record], sizes: list[tuple[int, int]]) -> list[int]:
        """Counted by encoding: prefix and suffix are tokenised together. PaliGemma resizes every
        image to one size, so a small blank stands in for each."""
        blank = [Image.new("RGB", (16, 16))] * len(records)
        prompts = [self.render(r.turns, False) for r in records]
        suffix = {} if self.generate else {"suffix": [r.turns[1].text for r in records]}
        self._check_single_turn(records)
        return self.encode(prompts, blank, padding_side="right", **suffix)["attention_mask"].sum(1).tolist()

    def _encode_for_training(self, records: list[Record], images) -> tuple[dict, torch.Tensor]:
        inputs = dict(self.encode([self.render(r.turns, False) for r in records], images, padding_side="right",
                                  suffix=[r.turns[1].text for r in records]))
        labels = inputs.pop("labels")
        self.check_lengths(records, inputs["attention_mask"].sum(1).tolist(), "conversation")
        labels[inputs["attention_mask"] == 0] = IGNORE_INDEX
        for record, row in zip(records, labels):
            if not (row != IGNORE_INDEX).any():
                raise DataError(f"{record.where()}: the answer encodes to no tokens")
        return inputs, labels


def make_collator(processor, max_length: int, generate: bool = False) -> ConversationCollator:
    """The collator for this processor's prompt convention: prefix/suffix (PaliGemma) or chat template."""
    from transformers import PaliGemmaProcessor

    cls = PrefixSuffixCollator if isinstance(processor, PaliGemmaProcessor) else ConversationCollator
    return cls(processor, max_length, generate)
