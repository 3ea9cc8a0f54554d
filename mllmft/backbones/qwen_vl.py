"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: component map, tiny random builders, an offline-safe processor loader.

The projector (``model.visual.merger``; Qwen3-VL also ``deepstack_merger_list``, which feed
intermediate vision features into early LLM layers) lives inside the vision module; the component
map's longest-prefix rule makes it the connector. The processor is image-only (see ``image_only``).
"""

from __future__ import annotations

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from mllmft.backbones.backbone import Backbone, ComponentMap, Family, tiny_backbone
from mllmft.backbones.image_only import image_only, image_only_loader
from mllmft.backbones.tokenizer import train_tokenizer
from mllmft.packing import mrope_positions

# Qwen's ChatML format (without the default system prompt of the released template).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
    "im_start_token": "<|im_start|>",
    "im_end_token": "<|im_end|>",
}


ImageOnlyQwen2VLProcessor = image_only(Qwen2VLProcessor, __name__)
ImageOnlyQwen3VLProcessor = image_only(Qwen3VLProcessor, __name__)
load_processor = image_only_loader(ImageOnlyQwen2VLProcessor, Qwen2VLImageProcessorPil)


def component_map(model) -> ComponentMap:
    return ComponentMap(
        vision=("model.visual",),
        connector=("model.visual.merger", "model.visual.deepstack_merger_list"),
        llm=("model.language_model", "lm_head"),
        layers={"vision": "model.visual.blocks", "llm": "model.language_model.layers"},
        embeddings="model.language_model.embed_tokens",
        head="lm_head",
    )


def _build_tiny(spec: dict, corpus: list[str], version: str) -> Backbone:
    tokenizer = train_tokenizer([*corpus, CHAT_TEMPLATE], spec["vocab_size"], extra_special=SPECIAL)
    pixels = spec["image_size"] ** 2  # fixed resolution: min = max pixels
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=spec["patch_size"], merge_size=2, temporal_patch_size=2
    )
    processor_class = ImageOnlyQwen3VLProcessor if version == "3" else ImageOnlyQwen2VLProcessor
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in SPECIAL.items()}
    head_dim = spec["text_hidden"] // spec["heads"]
    quarter = head_dim // 8  # mrope sections (temporal, height, width) must sum to head_dim / 2
    text = dict(
        hidden_size=spec["text_hidden"],
        intermediate_size=2 * spec["text_hidden"],
        num_hidden_layers=spec["text_layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["heads"],
        vocab_size=len(tokenizer),
        max_position_embeddings=spec["max_position_embeddings"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter],
        },
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=ids["im_end_token"],
    )
    vision = dict(
        depth=spec["vision_layers"],
        num_heads=spec["heads"],
        patch_size=spec["patch_size"],
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    token_ids = dict(
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
    )
    torch.manual_seed(spec.get("seed", 0))
    if version != "2":  # 2.5 and 3 name the vision widths alike, Qwen2-VL differently
        vision.update(
            hidden_size=spec["vision_hidden"],
            intermediate_size=2 * spec["vision_hidden"],
            out_hidden_size=spec["text_hidden"],
        )
    if version == "3":  # interleaved mrope; deepstack: vision features of some blocks go to early LLM layers
        text.update(head_dim=head_dim)
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(
            deepstack_visual_indexes=[spec["vision_layers"] - 1],
            num_position_embeddings=(spec["image_size"] // spec["patch_size"]) ** 2,
        )
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(vision_config=vision, text_config=text, **token_ids))
    elif version == "2.5":
        vision.update(window_size=4 * spec["patch_size"], fullatt_block_indexes=[spec["vision_layers"] - 1])
        model = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(vision_config=vision, text_config=text, **token_ids)
        )
    else:
        vision.update(embed_dim=spec["vision_hidden"], mlp_ratio=2, hidden_size=spec["text_hidden"])
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(vision_config=vision, text_config=text, **token_ids))
    family = {"2": "qwen2_vl", "2.5": "qwen2_5_vl", "3": "qwen3_vl"}[version]
    return tiny_backbone(model, processor, family, component_map, [ids["im_end_token"], tokenizer.eos_token_id])


# measured on the tiny models: peft's virtual tokens break the multimodal rotary positions
_MROPE = (
    "Qwen's multimodal rotary positions are computed from input_ids, which the virtual tokens do not "
    "have (shape mismatch inside attention); use strategy=lora (or another adapter)"
)
_NO_VIRTUAL_TOKENS = {"prompt_tuning": _MROPE, "prefix_tuning": _MROPE}

QWEN2_VL = Family(
    "qwen2_vl",
    ("qwen2_vl",),
    CHAT_TEMPLATE,
    component_map,
    lambda spec, corpus: _build_tiny(spec, corpus, "2"),
    Qwen2VLForConditionalGeneration,
    load_processor,
    unsupported=_NO_VIRTUAL_TOKENS,
    packing_positions=mrope_positions,
)
QWEN2_5_VL = Family(
    "qwen2_5_vl",
    ("qwen2_5_vl",),
    CHAT_TEMPLATE,
    component_map,
    lambda spec, corpus: _build_tiny(spec, corpus, "2.5"),
    Qwen2_5_VLForConditionalGeneration,
    load_processor,
    unsupported=_NO_VIRTUAL_TOKENS,
    packing_positions=mrope_positions,
)
QWEN3_VL = Family(
    "qwen3_vl",
    ("qwen3_vl",),
    CHAT_TEMPLATE,
    component_map,
    lambda spec, corpus: _build_tiny(spec, corpus, "3"),
    Qwen3VLForConditionalGeneration,
    image_only_loader(ImageOnlyQwen3VLProcessor, Qwen2VLImageProcessorPil),
    unsupported=_NO_VIRTUAL_TOKENS,
    packing_positions=mrope_positions,
)
