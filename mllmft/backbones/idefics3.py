"""Idefics3 and SmolVLM (the same architecture, separate classes): component map, tiny random builders.

Vision encoder ``model.vision_model``, connector ``model.connector`` (pixel shuffle + projection),
LLM ``model.text_model`` + ``lm_head``. Image splitting is off for the tiny model: one global image
of ``image_seq_len`` tokens. SmolVLM's processor carries a video processor, so it is image-only here.
"""

from __future__ import annotations

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)

from mllmft.backbones.backbone import Backbone, ComponentMap, Family, tiny_backbone
from mllmft.backbones.image_only import image_only, image_only_loader
from mllmft.backbones.llava import text_config
from mllmft.backbones.tokenizer import train_tokenizer
from mllmft.packing import text_positions

# Idefics3's conversation format: "User:<image>question<end_of_utterance>\nAssistant: answer<end_of_utterance>\n"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ 'User' if m['role'] == 'user' else 'Assistant' }}:"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}"
    "{% if m['role'] != 'user' %} {% endif %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
SMOLVLM_TEMPLATE = "<|im_start|>" + CHAT_TEMPLATE  # SmolVLM's: the same turns after one <|im_start|>
ImageOnlySmolVLMProcessor = image_only(SmolVLMProcessor, __name__)


def component_map(model) -> ComponentMap:
    return ComponentMap(
        vision=("model.vision_model",),
        connector=("model.connector",),
        llm=("model.text_model", "lm_head"),
        layers={"vision": "model.vision_model.encoder.layers", "llm": "model.text_model.layers"},
        embeddings="model.text_model.embed_tokens",
        head="lm_head",
    )


def _build_tiny(spec: dict, corpus: list[str], family: str) -> Backbone:
    smol = family == "smolvlm"
    template = SMOLVLM_TEMPLATE if smol else CHAT_TEMPLATE
    # SmolVLM's processor reads its special tokens from the tokenizer; Idefics3's adds them itself
    special = (
        {
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        }
        if smol
        else {}
    )
    tokenizer = train_tokenizer([*corpus, template], spec["vocab_size"], extra_special=special)
    size, patch, scale = spec["image_size"], spec["patch_size"], 2
    image_processor_class, processor_class = (
        (SmolVLMImageProcessorPil, ImageOnlySmolVLMProcessor)
        if smol
        else (Idefics3ImageProcessorPil, Idefics3Processor)
    )
    image_processor = image_processor_class(
        do_image_splitting=False, size={"longest_edge": size}, max_image_size={"longest_edge": size}
    )
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(size // patch) ** 2 // scale**2,
        chat_template=template,
    )
    end_of_utterance = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    config_class, model_class = (
        (SmolVLMConfig, SmolVLMForConditionalGeneration) if smol else (Idefics3Config, Idefics3ForConditionalGeneration)
    )
    config = config_class(
        vision_config=dict(
            hidden_size=spec["vision_hidden"],
            intermediate_size=2 * spec["vision_hidden"],
            num_hidden_layers=spec["vision_layers"],
            num_attention_heads=spec["heads"],
            image_size=size,
            patch_size=patch,
        ),
        text_config=text_config(spec, tokenizer) | {"eos_token_id": end_of_utterance},
        scale_factor=scale,
        image_token_id=processor.image_token_id,
    )
    torch.manual_seed(spec.get("seed", 0))
    return tiny_backbone(
        model_class(config), processor, family, component_map, [end_of_utterance, tokenizer.eos_token_id]
    )


IDEFICS3 = Family(
    "idefics3",
    ("idefics3",),
    CHAT_TEMPLATE,
    component_map,
    lambda spec, corpus: _build_tiny(spec, corpus, "idefics3"),
    Idefics3ForConditionalGeneration,
    packing_positions=text_positions,
)
SMOLVLM = Family(
    "smolvlm",
    ("smolvlm",),
    SMOLVLM_TEMPLATE,
    component_map,
    lambda spec, corpus: _build_tiny(spec, corpus, "smolvlm"),
    SmolVLMForConditionalGeneration,
    image_only_loader(ImageOnlySmolVLMProcessor, SmolVLMImageProcessorPil),
    packing_positions=text_positions,
)
