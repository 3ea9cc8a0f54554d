"""LLaVA (1.5 and the same architecture at any size): component map, tiny random builder.

LLaVA-NeXT and LLaVA-OneVision (llava_next.py) share the component map and the tiny configs' pieces.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from mllmft.backbones.backbone import Backbone, ComponentMap, Family, find_module, tiny_backbone
from mllmft.backbones.tokenizer import train_tokenizer
from mllmft.packing import text_positions

# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT: ...</s>"), as a chat template.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def component_map(model: LlavaForConditionalGeneration) -> ComponentMap:
    vision = "model.vision_tower"
    vision_layers = find_module(model, vision, "layers", nn.ModuleList)
    n = len(model.get_submodule(vision_layers))
    # LLaVA reads the vision tower's hidden_states[feature_layer] (index 0 = embeddings), so the
    # blocks after it and the final post_layernorm never reach the loss.
    layer = model.config.vision_feature_layer
    layer = max(layer) if isinstance(layer, (list, tuple)) else layer
    used = layer if layer >= 0 else n + 1 + layer
    inert = [f"{vision_layers}.{i}" for i in range(used, n)]
    post_norm = find_module(model, vision, "post_layernorm", nn.Module)
    if post_norm is not None:
        inert.append(post_norm)
    # LLaVA-NeXT/OneVision's image_newline (a bare parameter between rows of image features) is connector
    connector = ("model.multi_modal_projector", "model.image_newline")
    return ComponentMap(
        vision=(vision,),
        connector=connector,
        llm=("model.language_model", "lm_head"),
        layers={"vision": vision_layers, "llm": "model.language_model.layers"},
        embeddings="model.language_model.embed_tokens",
        head="lm_head",
        inert=tuple(inert),
    )


def vision_config(spec: dict, model_type: str = "clip_vision_model") -> dict:
    extra = {"vision_use_head": False} if model_type == "siglip_vision_model" else {}  # as released
    return dict(
        model_type=model_type,
        hidden_size=spec["vision_hidden"],
        intermediate_size=2 * spec["vision_hidden"],
        num_hidden_layers=spec["vision_layers"],
        num_attention_heads=spec["heads"],
        image_size=spec["image_size"],
        patch_size=spec["patch_size"],
        **extra,
    )


def text_config(spec: dict, tokenizer, model_type: str = "llama", **extra) -> dict:
    return dict(
        model_type=model_type,
        hidden_size=spec["text_hidden"],
        intermediate_size=2 * spec["text_hidden"],
        num_hidden_layers=spec["text_layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["heads"],
        vocab_size=len(tokenizer),
        max_position_embeddings=spec["max_position_embeddings"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def build_tiny(spec: dict, corpus: list[str]) -> Backbone:
    """A randomly initialised LLaVA of the given (small) size, with a tokenizer trained on ``corpus``."""
    tokenizer = train_tokenizer([*corpus, CHAT_TEMPLATE], spec["vocab_size"], extra_special={"image_token": "<image>"})
    size = spec["image_size"]
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec["patch_size"],
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=vision_config(spec),
        text_config=text_config(spec, tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(spec.get("seed", 0))
    return tiny_backbone(
        LlavaForConditionalGeneration(config), processor, "llava", component_map, [tokenizer.eos_token_id]
    )


LLAVA = Family(
    "llava",
    ("llava",),
    CHAT_TEMPLATE,
    component_map,
    build_tiny,
    LlavaForConditionalGeneration,
    packing_positions=text_positions,
)
