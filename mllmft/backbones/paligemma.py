"""PaliGemma 1 and 2: component map and tiny random builder.

PaliGemma has no chat format: the prompt is a *prefix* (image tokens, BOS, prompt, newline) that the
model reads with full attention (``token_type_ids`` 0), and the answer a *suffix* (answer, EOS) that
it predicts causally (``token_type_ids`` 1). The processor builds both and the labels from
``suffix=``; ``mllmft.data.PrefixSuffixCollator`` uses that instead of a chat template, so the
family has none. Released checkpoints expect task prefixes such as ``answer en`` or ``caption en``
in the prompt; fine-tuning teaches whatever the data's prompts are.
"""

from __future__ import annotations

import torch
from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessorPil,
)

from mllmft.backbones.backbone import Backbone, ComponentMap, Family, tiny_backbone
from mllmft.backbones.llava import text_config, vision_config
from mllmft.backbones.tokenizer import train_tokenizer


def component_map(model) -> ComponentMap:
    return ComponentMap(
        vision=("model.vision_tower",), connector=("model.multi_modal_projector",),
        llm=("model.language_model", "lm_head"),
        layers={"vision": "model.vision_tower.encoder.layers", "llm": "model.language_model.layers"},
        embeddings="model.language_model.embed_tokens", head="lm_head")


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
        image_token_id=processor.image_token_id, projection_dim=spec["text_hidden"])
    torch.manual_seed(spec.get("seed", 0))
    return tiny_backbone(PaliGemmaForConditionalGeneration(config), processor, "paligemma", component_map,
                         [tokenizer.eos_token_id])


PALIGEMMA = Family("paligemma", ("paligemma",), None, component_map, build_tiny, PaliGemmaForConditionalGeneration)
