"""LLaVA-NeXT (1.6) and LLaVA-OneVision: LLaVA with any-resolution tiling and ``image_newline``.

Both split an image into tiles on a grid of ``image_grid_pinpoints`` plus a resized base view, and put
the learned ``model.image_newline`` vector after each row of tile features; the component map
(shared with LLaVA) counts it as connector. OneVision pairs a SigLIP tower with a Qwen2 LLM, uses
ChatML, and its processor carries a video processor, so it is image-only here. The tiny models use a
single 1x1 grid: base view + one tile.
"""

from __future__ import annotations

import torch
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)

from mllmft.backbones.backbone import Backbone, Family, tiny_backbone
from mllmft.backbones.image_only import image_only, image_only_loader
from mllmft.backbones.llava import CHAT_TEMPLATE, component_map, text_config, vision_config
from mllmft.backbones.qwen_vl import CHAT_TEMPLATE as CHATML_TEMPLATE
from mllmft.backbones.tokenizer import train_tokenizer
from mllmft.packing import text_positions

# OneVision's format: ChatML with a bare <image> placeholder
ONEVISION_TEMPLATE = CHATML_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n")
ImageOnlyLlavaOnevisionProcessor = image_only(LlavaOnevisionProcessor, __name__)


def build_tiny_next(spec: dict, corpus: list[str]) -> Backbone:
    tokenizer = train_tokenizer([*corpus, CHAT_TEMPLATE], spec["vocab_size"], extra_special={"image_token": "<image>"})
    size, grid = spec["image_size"], [[spec["image_size"], spec["image_size"]]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": size}, image_grid_pinpoints=grid, crop_size={"height": size, "width": size}
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec["patch_size"],
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    config = LlavaNextConfig(
        vision_config=vision_config(spec),
        text_config=text_config(spec, tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(spec.get("seed", 0))
    return tiny_backbone(
        LlavaNextForConditionalGeneration(config), processor, "llava_next", component_map, [tokenizer.eos_token_id]
    )


def build_tiny_onevision(spec: dict, corpus: list[str]) -> Backbone:
    special = {"image_token": "<image>", "video_token": "<video>", "im_end_token": "<|im_end|>"}
    tokenizer = train_tokenizer([*corpus, ONEVISION_TEMPLATE], spec["vocab_size"], extra_special=special)
    size, grid = spec["image_size"], [[spec["image_size"], spec["image_size"]]]
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": size, "width": size}, image_grid_pinpoints=grid)
    processor = ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=ONEVISION_TEMPLATE,
        num_image_tokens=(size // spec["patch_size"]) ** 2,
        vision_feature_select_strategy="full",
    )
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlavaOnevisionConfig(
        vision_config=vision_config(spec, "siglip_vision_model"),
        text_config=text_config(spec, tokenizer, "qwen2") | {"eos_token_id": im_end},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(spec.get("seed", 0))
    return tiny_backbone(
        LlavaOnevisionForConditionalGeneration(config),
        processor,
        "llava_onevision",
        component_map,
        [im_end, tokenizer.eos_token_id],
    )


LLAVA_NEXT = Family(
    "llava_next",
    ("llava_next",),
    CHAT_TEMPLATE,
    component_map,
    build_tiny_next,
    LlavaNextForConditionalGeneration,
    packing_positions=text_positions,
)
LLAVA_ONEVISION = Family(
    "llava_onevision",
    ("llava_onevision",),
    ONEVISION_TEMPLATE,
    component_map,
    build_tiny_onevision,
    LlavaOnevisionForConditionalGeneration,
    image_only_loader(ImageOnlyLlavaOnevisionProcessor, LlavaOnevisionImageProcessorPil),
    packing_positions=text_positions,
)
