"""BLIP-2 (OPT language model): component map and tiny random builder.

The connector is three pieces: the learned ``query_tokens``, the ``qformer`` and the
``language_projection``. The LLM is a full causal LM with its own (tied) head. The processor puts
``num_query_tokens`` image placeholders before the text; there is no chat template in the released
checkpoints, so one in BLIP-2's "Question: ... Answer: ..." style is provided.
"""

from __future__ import annotations

import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

from mllmft.backbones.backbone import Backbone, ComponentMap, Family
from mllmft.backbones.tokenizer import train_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}Question: "
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}Answer: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)


def component_map(model) -> ComponentMap:
    return ComponentMap(
        vision=("vision_model",), connector=("query_tokens", "qformer", "language_projection"),
        llm=("language_model",),
        layers={"vision": "vision_model.encoder.layers", "llm": "language_model.model.decoder.layers"},
        embeddings="language_model.model.decoder.embed_tokens", head="language_model.lm_head")


def build_tiny(spec: dict, corpus: list[str]) -> Backbone:
    tokenizer = train_tokenizer([*corpus, CHAT_TEMPLATE], spec["vocab_size"], extra_special={})
    size, queries = spec["image_size"], spec["num_query_tokens"]
    image_processor = BlipImageProcessorPil(size={"height": size, "width": size})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=queries)
    processor.chat_template = CHAT_TEMPLATE  # the processor adds "<image>" to the tokenizer: size it after
    vision_hidden, text_hidden = spec["vision_hidden"], spec["text_hidden"]
    config = Blip2Config(
        vision_config=dict(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                           num_hidden_layers=spec["vision_layers"], num_attention_heads=spec["heads"],
                           image_size=size, patch_size=spec["patch_size"]),
        qformer_config=dict(hidden_size=vision_hidden, num_hidden_layers=spec["qformer_layers"],
                            num_attention_heads=spec["heads"], intermediate_size=2 * vision_hidden,
                            encoder_hidden_size=vision_hidden),
        text_config=dict(model_type="opt", hidden_size=text_hidden, ffn_dim=2 * text_hidden,
                         num_hidden_layers=spec["text_layers"], num_attention_heads=spec["heads"],
                         vocab_size=len(tokenizer), max_position_embeddings=spec["max_position_embeddings"],
                         word_embed_proj_dim=text_hidden, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        num_query_tokens=queries, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(spec.get("seed", 0))
    model = Blip2ForConditionalGeneration(config)
    # transformers initialises the query tokens to zeros: identical queries give the Q-Former's
    # self-attention exactly zero gradient. Checkpoints have trained ones; a random model needs noise.
    with torch.no_grad():
        model.query_tokens.normal_(0.0, config.initializer_range)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return Backbone(model=model, processor=processor, family="blip2", components=component_map(model),
                    source="tiny (random)")


BLIP2 = Family("blip2", ("blip-2",), CHAT_TEMPLATE, component_map, build_tiny, Blip2ForConditionalGeneration)
