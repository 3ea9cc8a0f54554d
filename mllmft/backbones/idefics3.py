"""Idefics3 (and SmolVLM's architecture): component map and tiny random builder.

Vision encoder ``model.vision_model``, connector ``model.connector`` (pixel shuffle + projection),
LLM ``model.text_model`` + ``lm_head``. Image splitting is off for the tiny model: one global image
of ``image_seq_len`` tokens.
"""

from __future__ import annotations

import torch
from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor

from mllmft.backbones.backbone import Backbone, ComponentMap, Family
from mllmft.backbones.tokenizer import train_tokenizer

# Idefics3's conversation format: "User:<image>question<end_of_utterance>\nAssistant: answer<end_of_utterance>\n"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ 'User' if m['role'] == 'user' else 'Assistant' }}:"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}"
    "{% if m['role'] != 'user' %} {% endif %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def component_map(model) -> ComponentMap:
    return ComponentMap(
        vision=("model.vision_model",), connector=("model.connector",), llm=("model.text_model", "lm_head"),
        layers={"vision": "model.vision_model.encoder.layers", "llm": "model.text_model.layers"},
        embeddings="model.text_model.embed_tokens", head="lm_head")


def build_tiny(spec: dict, corpus: list[str]) -> Backbone:
    tokenizer = train_tokenizer([*corpus, CHAT_TEMPLATE], spec["vocab_size"], extra_special={})
    size, patch, scale = spec["image_size"], spec["patch_size"], 2
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": size},
                                                max_image_size={"longest_edge": size})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=(size // patch) ** 2 // scale**2, chat_template=CHAT_TEMPLATE)
    end_of_utterance = tokenizer.convert_tokens_to_ids("<end_of_utterance>")  # added by the processor
    config = Idefics3Config(
        vision_config=dict(hidden_size=spec["vision_hidden"], intermediate_size=2 * spec["vision_hidden"],
                           num_hidden_layers=spec["vision_layers"], num_attention_heads=spec["heads"],
                           image_size=size, patch_size=patch),
        text_config=dict(model_type="llama", hidden_size=spec["text_hidden"], intermediate_size=2 * spec["text_hidden"],
                         num_hidden_layers=spec["text_layers"], num_attention_heads=spec["heads"],
                         num_key_value_heads=spec["heads"], vocab_size=len(tokenizer),
                         max_position_embeddings=spec["max_position_embeddings"],
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=end_of_utterance),
        scale_factor=scale, image_token_id=processor.image_token_id)
    torch.manual_seed(spec.get("seed", 0))
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [end_of_utterance, tokenizer.eos_token_id]
    return Backbone(model=model, processor=processor, family="idefics3", components=component_map(model),
                    source="tiny (random)")


IDEFICS3 = Family("idefics3", ("idefics3",), CHAT_TEMPLATE, component_map, build_tiny,
                  Idefics3ForConditionalGeneration)
