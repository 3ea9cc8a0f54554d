"""InternVL (2.5 / 3, transformers format): component map and tiny random builder.

InternViT vision tower ``model.vision_tower``, MLP projector after a pixel shuffle
(``model.multi_modal_projector``), a Qwen2/Llama LLM ``model.language_model`` + ``lm_head``. The
processor wraps each image's ``image_seq_length`` context tokens in ``<img>...</img>``; it carries a
video processor, so it is image-only here. The tiny model sees one 32-px tile (no dynamic tiling).
"""

from __future__ import annotations

import torch
from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor

from mllmft.backbones.backbone import Backbone, ComponentMap, Family, tiny_backbone
from mllmft.backbones.image_only import image_only, image_only_loader
from mllmft.backbones.llava import text_config
from mllmft.backbones.qwen_vl import CHAT_TEMPLATE as CHATML_TEMPLATE
from mllmft.backbones.tokenizer import train_tokenizer
from mllmft.packing import text_positions

CHAT_TEMPLATE = CHATML_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")
SPECIAL = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
    "im_end_token": "<|im_end|>",
}
ImageOnlyInternVLProcessor = image_only(InternVLProcessor, __name__)


def component_map(model) -> ComponentMap:
    return ComponentMap(
        vision=("model.vision_tower",),
        connector=("model.multi_modal_projector",),
        llm=("model.language_model", "lm_head"),
        layers={"vision": "model.vision_tower.encoder.layer", "llm": "model.language_model.layers"},
        embeddings="model.language_model.embed_tokens",
        head="lm_head",
    )


def build_tiny(spec: dict, corpus: list[str]) -> Backbone:
    tokenizer = train_tokenizer([*corpus, CHAT_TEMPLATE], spec["vocab_size"], extra_special=SPECIAL)
    size, patch = spec["image_size"], spec["patch_size"]
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": size, "width": size}, crop_to_patches=False, max_patches=1
    )  # one tile, no thumbnail
    tokens = (size // patch) ** 2 // 4  # pixel shuffle with downsample_ratio 0.5
    processor = ImageOnlyInternVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens, chat_template=CHAT_TEMPLATE
    )
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=spec["vision_hidden"],
            intermediate_size=2 * spec["vision_hidden"],
            num_hidden_layers=spec["vision_layers"],
            num_attention_heads=spec["heads"],
            image_size=[size, size],
            patch_size=[patch, patch],
        ),
        text_config=text_config(spec, tokenizer, "qwen2") | {"eos_token_id": im_end},
        image_token_id=processor.image_token_id,
        image_seq_length=tokens,
    )
    torch.manual_seed(spec.get("seed", 0))
    return tiny_backbone(
        InternVLForConditionalGeneration(config), processor, "internvl", component_map, [im_end, tokenizer.eos_token_id]
    )


INTERNVL = Family(
    "internvl",
    ("internvl",),
    CHAT_TEMPLATE,
    component_map,
    build_tiny,
    InternVLForConditionalGeneration,
    image_only_loader(ImageOnlyInternVLProcessor, GotOcr2ImageProcessorPil),
    packing_positions=text_positions,
)
