"""PaliGemma 1 and 2: component map, tiny random builder and prefix/suffix collator.

PaliGemma has no chat format: the prompt is a *prefix* (image tokens, BOS, prompt, newline) that the
model reads with full attention (``token_type_ids`` 0), and the answer a *suffix* (answer, EOS) that
it predicts causally (``token_type_ids`` 1). The processor builds both and the labels from
``suffix=``; ``PrefixSuffixCollator`` below uses that instead of a chat template, so the family
has none: rendering the answer into the prefix text instead would let every prompt position attend
to it (the model would see what it is asked to predict). Released checkpoints expect task
prefixes such as ``answer en`` or ``caption en`` in the prompt; fine-tuning teaches whatever the
data's prompts are.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessorPil,
)

from mllmft.backbones.backbone import Backbone, ComponentMap, Family, tiny_backbone
from mllmft.backbones.llava import text_config, vision_config
from mllmft.backbones.tokenizer import train_tokenizer
from mllmft.data.collate import IGNORE_INDEX, ConversationCollator
from mllmft.data.record import Record, Turn
from mllmft.errors import DataError


def component_map(model) -> ComponentMap:
    return ComponentMap(
        vision=("model.vision_tower",),
        connector=("model.multi_modal_projector",),
        llm=("model.language_model", "lm_head"),
        layers={"vision": "model.vision_tower.encoder.layers", "llm": "model.language_model.layers"},
        embeddings="model.language_model.embed_tokens",
        head="lm_head",
    )


def build_tiny(spec: dict, corpus: list[str]) -> Backbone:
    tokenizer = train_tokenizer(corpus, spec["vocab_size"], extra_special={"image_token": "<image>"})
    size, patch = spec["image_size"], spec["patch_size"]
    image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
    image_processor.image_seq_length = (size // patch) ** 2  # read by the processor; saved with it
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    head_dim = spec["text_hidden"] // spec["heads"]  # Gemma's default head_dim (256) is a 2B model's
    config = PaliGemmaConfig(
        vision_config=vision_config(spec, "siglip_vision_model") | {"projection_dim": spec["text_hidden"]},
        text_config=text_config(spec, tokenizer, "gemma", head_dim=head_dim),
        image_token_id=processor.image_token_id,
        projection_dim=spec["text_hidden"],
    )
    torch.manual_seed(spec.get("seed", 0))
    return tiny_backbone(
        PaliGemmaForConditionalGeneration(config), processor, "paligemma", component_map, [tokenizer.eos_token_id]
    )


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
                raise DataError(
                    f"{record.where()}: PaliGemma models take one prompt and one answer (prefix and "
                    f"suffix); this record has {len(record.turns)} turns. Split it into single-turn "
                    "records or use a chat-template family."
                )

    def render(self, turns: tuple[Turn, ...], n_images: int, add_generation_prompt: bool) -> str:
        # the image placeholders first: the processor expands each to image_seq_length tokens, then BOS
        return self.processor.image_token * n_images + turns[0].text

    def token_lengths(self, records: list[Record], sizes: list[tuple[tuple[int, int], ...]]) -> list[int]:
        """Counted by encoding: prefix and suffix are tokenised together. PaliGemma resizes every
        image to one size, so a small blank stands in for each."""
        blanks = [[Image.new("RGB", (16, 16))] * len(r.images) for r in records]
        prompts = [self.render(r.turns, len(r.images), False) for r in records]
        suffix = {} if self.generate else {"suffix": [r.turns[1].text for r in records]}
        self._check_single_turn(records)
        return self.encode(prompts, blanks, padding_side="right", **suffix)["attention_mask"].sum(1).tolist()

    def _encode_for_training(self, records: list[Record], images) -> tuple[dict, torch.Tensor]:
        inputs = dict(
            self.encode(
                [self.render(r.turns, len(r.images), False) for r in records],
                images,
                padding_side="right",
                suffix=[r.turns[1].text for r in records],
            )
        )
        labels = inputs.pop("labels")
        self.check_lengths(records, inputs["attention_mask"].sum(1).tolist(), "conversation")
        labels[inputs["attention_mask"] == 0] = IGNORE_INDEX
        for record, row in zip(records, labels):
            if not (row != IGNORE_INDEX).any():
                raise DataError(f"{record.where()}: the answer encodes to no tokens")
        return inputs, labels


PALIGEMMA = Family(
    "paligemma",
    ("paligemma",),
    None,
    component_map,
    build_tiny,
    PaliGemmaForConditionalGeneration,
    collator=PrefixSuffixCollator,
    no_packing_why=(
        "its prefix (image and prompt) attends both ways, a mask transformers does not build for packed samples"
    ),
)
