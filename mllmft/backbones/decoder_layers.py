"""Module names inside an LLM decoder layer, per text architecture.

The table is per text architecture rather than per family: one family ships several (BLIP-2 with OPT,
InstructBLIP with Vicuna, LLaVA with Llama or Mistral), and most families share the Llama naming.
Strategies that pick modules by role (HFT's attention / MLP / norm groups, IA3's feed-forward
outputs) look the names up here from the layer itself.
"""

from __future__ import annotations

from collections.abc import Iterable

# (attention, mlp, norms) module names of the decoder-layer conventions transformers uses
LAYER_NAMES = {
    "llama": (
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        ("gate_proj", "up_proj", "down_proj"),
        ("input_layernorm", "post_attention_layernorm"),
    ),
    "opt": (("q_proj", "k_proj", "v_proj", "out_proj"), ("fc1", "fc2"), ("self_attn_layer_norm", "final_layer_norm")),
}
# the linear that closes each feed-forward block (Llama/Gemma/Qwen, OPT, Mixtral experts, GPT-NeoX)
FEEDFORWARD_OUTPUTS = ("down_proj", "fc2", "w2", "dense_4h_to_h")


def missing_modules(module_names: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The ``wanted`` short names that no module of ``module_names`` (dotted paths) ends with."""
    short = {name.split(".")[-1] for name in module_names}
    return [m for m in wanted if m not in short]


def detect_layer_names(module_names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """{"attention", "mlp", "norms"} -> module names, from the first convention the layer has all of
    (empty if none: the user names them)."""
    names = set(module_names)
    for scheme in LAYER_NAMES.values():
        if not missing_modules(names, (m for group in scheme for m in group)):
            return dict(zip(("attention", "mlp", "norms"), scheme))
    return {}
