"""BLIP-2 (OPT) and InstructBLIP (Vicuna): component map and tiny random builders.

The connector is three pieces: the learned ``query_tokens``, the ``qformer`` and the
``language_projection``. The LLM is a full causal LM with its own (tied) head. The processor puts
``num_query_tokens`` image placeholders before the text; there is no chat template in the released
checkpoints, so one in BLIP-2's "Question: ... Answer: ..." style is provided.

InstructBLIP's Q-Former also reads the instruction (``qformer_input_ids``, its own tokenizer). It must
read the prompt only: the collator re-encodes it from the prompt turns, never from the whole
conversation, or the answer would reach the LLM through the query tokens.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessorPil,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
)

from mllmft.backbones.backbone import Backbone, ComponentMap, Family, find_module, tiny_backbone
from mllmft.backbones.llava import text_config
from mllmft.backbones.tokenizer import train_tokenizer
from mllmft.data.collate import ConversationCollator

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}Question: "
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}Answer: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)
# InstructBLIP (Vicuna) answers after the instruction itself: "<instruction> Answer: <answer></s>"
INSTRUCTBLIP_TEMPLATE = CHAT_TEMPLATE.replace("Question: ", "")


def component_map(model) -> ComponentMap:
    # OPT keeps its blocks in language_model.model.decoder.layers, Llama/Vicuna in language_model.model.layers
    llm_layers = find_module(model, "language_model", "layers", nn.ModuleList)
    embeddings = next(n for n, m in model.named_modules() if m is model.language_model.get_input_embeddings())
    return ComponentMap(
        vision=("vision_model",),
        connector=("query_tokens", "qformer", "language_projection"),
        llm=("language_model",),
        layers={"vision": "vision_model.encoder.layers", "llm": llm_layers},
        embeddings=embeddings,
        head="language_model.lm_head",
    )


def _build_tiny(spec: dict, corpus: list[str], family: str) -> Backbone:
    instruct = family == "instructblip"
    template = INSTRUCTBLIP_TEMPLATE if instruct else CHAT_TEMPLATE
    tokenizer = train_tokenizer([*corpus, template], spec["vocab_size"], extra_special={})
    size, queries = spec["image_size"], spec["num_query_tokens"]
    image_processor = BlipImageProcessorPil(size={"height": size, "width": size})
    if instruct:  # the Q-Former reads the instruction with its own (BERT-style) tokenizer; here a copy
        qformer_tokenizer = copy.deepcopy(tokenizer)
        processor = InstructBlipProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            qformer_tokenizer=qformer_tokenizer,
            num_query_tokens=queries,
        )
    else:
        processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=queries)
    processor.chat_template = template  # the processor adds "<image>" to the tokenizer: size it after
    vision_hidden = spec["vision_hidden"]
    qformer = dict(
        hidden_size=vision_hidden,
        num_hidden_layers=spec["qformer_layers"],
        num_attention_heads=spec["heads"],
        intermediate_size=2 * vision_hidden,
        encoder_hidden_size=vision_hidden,
    )
    text = (
        text_config(spec, tokenizer)
        if instruct
        # Vicuna (Llama) / OPT
        else text_config(spec, tokenizer, "opt")
        | {"ffn_dim": 2 * spec["text_hidden"], "word_embed_proj_dim": spec["text_hidden"]}
    )
    config_class, model_class = (
        (InstructBlipConfig, InstructBlipForConditionalGeneration)
        if instruct
        else (Blip2Config, Blip2ForConditionalGeneration)
    )
    config = config_class(
        vision_config=dict(
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_hidden_layers=spec["vision_layers"],
            num_attention_heads=spec["heads"],
            image_size=size,
            patch_size=spec["patch_size"],
        ),
        qformer_config=qformer | ({"vocab_size": len(processor.qformer_tokenizer)} if instruct else {}),
        text_config=text,
        num_query_tokens=queries,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(spec.get("seed", 0))
    model = model_class(config)
    # transformers initialises the query tokens to zeros: identical queries give the Q-Former's
    # self-attention exactly zero gradient. Checkpoints have trained ones; a random model needs noise.
    with torch.no_grad():
        model.query_tokens.normal_(0.0, config.initializer_range)
    return tiny_backbone(model, processor, family, component_map, [tokenizer.eos_token_id])


class Blip2Collator(ConversationCollator):
    """Chat-template collation of one image per record."""

    max_images = 1
    max_images_why = "the Q-Former's query tokens stand for one image"


class InstructBlipCollator(Blip2Collator):
    """Chat-template collation plus the Q-Former's own reading of the instruction."""

    def __call__(self, items: list) -> dict:
        batch = super().__call__(items)
        batch["model_inputs"].update(self._instruction_inputs([record for _, record, _ in items]))
        return batch

    def _instruction_inputs(self, records) -> dict:
        """InstructBLIP's Q-Former reads the instruction (the first user turn) with its own tokenizer.
        The processor would give it the whole text, answers included, which the LLM could then read
        through the query tokens during training."""
        texts = [self.render(r.turns[:1], len(r.images), add_generation_prompt=True) for r in records]
        # truncated to the Q-Former tokenizer's limit (BERT: 512 positions), as InstructBLIP's processor does
        q = self.processor.qformer_tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return {"qformer_input_ids": q["input_ids"], "qformer_attention_mask": q["attention_mask"]}


_NO_PROMPT_TUNING = {
    "prompt_tuning": "peft prepends virtual tokens through inputs_embeds, which BLIP-2's "
    "generate() does not accept without input_ids; use strategy=lora"
}
_NO_PACKING = (
    "its OPT language model takes learned positions from the attention mask and its query tokens come before "
    "each sample's text, so samples laid end to end would see each other"
)
BLIP2 = Family(
    "blip2",
    ("blip-2",),
    CHAT_TEMPLATE,
    component_map,
    lambda spec, corpus: _build_tiny(spec, corpus, "blip2"),
    Blip2ForConditionalGeneration,
    collator=Blip2Collator,
    unsupported=_NO_PROMPT_TUNING,
    no_packing_why=_NO_PACKING,
)
INSTRUCTBLIP = Family(
    "instructblip",
    ("instructblip",),
    INSTRUCTBLIP_TEMPLATE,
    component_map,
    lambda spec, corpus: _build_tiny(spec, corpus, "instructblip"),
    InstructBlipForConditionalGeneration,
    collator=InstructBlipCollator,
    unsupported=_NO_PROMPT_TUNING,
    no_packing_why=_NO_PACKING,
)
