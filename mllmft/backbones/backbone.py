"""A loaded MLLM: the HF model, its processor, and where its components live."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from mllmft.data.collate import ConversationCollator
from mllmft.errors import ConfigError
from mllmft.packing import PositionIds

if TYPE_CHECKING:
    from transformers import PreTrainedModel

COMPONENTS = ("vision", "connector", "llm")


@dataclass(frozen=True)
class ComponentMap:
    """Parameter-name prefixes of each component, plus the module lists that hold their layers.

    Every parameter belongs to exactly one of ``vision``, ``connector`` and ``llm`` (tested per
    family). ``inert`` names parameters the forward pass never uses (e.g. LLaVA's vision
    ``post_layernorm``): they are always frozen, since DDP fails on parameters without gradients.
    """

    vision: tuple[str, ...]
    connector: tuple[str, ...]
    llm: tuple[str, ...]
    layers: dict[str, str]  # component -> dotted path of its nn.ModuleList of blocks
    embeddings: str
    head: str
    inert: tuple[str, ...] = ()

    def component_of(self, param_name: str) -> str:
        """The component with the longest matching prefix: Qwen's projector ``model.visual.merger``
        lives inside its vision module ``model.visual`` and still counts as the connector."""
        matches = [(len(p), c) for c in COMPONENTS for p in getattr(self, c) if _under(param_name, p)]
        if not matches:
            raise KeyError(f"parameter {param_name!r} belongs to no component of this backbone")
        return max(matches)[1]

    def layer_of(self, param_name: str, component: str) -> int | None:
        """Index of the block (in ``layers[component]``) that holds this parameter, if any."""
        prefix = self.layers.get(component)
        if prefix is None or not _under(param_name, prefix):
            return None
        return int(param_name[len(prefix) + 1 :].split(".", 1)[0])

    def is_inert(self, param_name: str) -> bool:
        return any(_under(param_name, p) for p in self.inert)

    def rerooted(self, root: str) -> ComponentMap:
        """The same map for a model wrapped so that every name gains ``root`` in front (a PeftModel's
        ``base_model.model.``); peft's inner names (``.base_layer``, ``.lora_A``) stay under the prefixes."""
        return ComponentMap(
            vision=tuple(root + p for p in self.vision),
            connector=tuple(root + p for p in self.connector),
            llm=tuple(root + p for p in self.llm),
            layers={c: root + p for c, p in self.layers.items()},
            embeddings=root + self.embeddings,
            head=root + self.head,
            inert=tuple(root + p for p in self.inert),
        )


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def find_module(model: nn.Module, under: str, suffix: str, kind: type) -> str | None:
    """Name of the first ``kind`` module below ``under`` whose name ends with ``suffix`` (paths differ
    between versions of one architecture, e.g. OPT's ``model.decoder.layers`` vs Llama's ``model.layers``)."""
    for name, module in model.named_modules():
        if name.startswith(under + ".") and name.endswith(suffix) and isinstance(module, kind):
            return name
    return None


@dataclass(frozen=True)
class Family:
    """One MLLM family: how to recognise, map, build (tiny), load and feed it.

    ``load_processor(path, trust_remote_code)`` replaces ``AutoProcessor`` where that cannot work
    offline without torchvision (families whose processors also carry a video processor).
    ``collator`` turns records into the family's inputs (a chat template unless the family says
    otherwise); ``unsupported`` names the strategies the family refuses at start-up, with why.
    ``packing_positions``: each sample's position ids in a packed batch (``mllmft.packing``), or None where
    the family's attention cannot take packed samples, ``no_packing_why`` saying why."""

    name: str
    model_types: tuple[str, ...]
    chat_template: str | None  # None: the family's prompts are not chat (PaliGemma's prefix/suffix)
    component_map: Callable[[nn.Module], ComponentMap]
    build_tiny: Callable[[dict, list[str]], Backbone]
    model_class: type  # the *ForConditionalGeneration class (meta-device shape checks)
    load_processor: Callable[[str, bool], object] | None = None
    collator: type[ConversationCollator] = ConversationCollator
    unsupported: Mapping[str, str] = field(default_factory=dict)  # strategy name -> why it cannot work
    packing_positions: PositionIds | None = None
    no_packing_why: str = "packed batches were not checked against padded ones for this family"


FAMILIES: dict[str, Family] = {}  # name -> family: the built-in ones (backbones/__init__.py) and a user's own


@dataclass
class Backbone:
    """A loaded MLLM: the HF model, its processor, its family and where its components' parameters live."""

    model: Any  # a transformers PreTrainedModel, or peft's wrapper of one once an adapter strategy attaches
    processor: Any  # a transformers processor; what it carries (tokenizer, image processor ...) is per family
    family: str
    components: ComponentMap
    source: str  # checkpoint path / hub id, or "tiny (random)"
    info: dict = field(default_factory=dict)

    @property
    def collator_class(self) -> type[ConversationCollator]:
        return FAMILIES[self.family].collator  # registered when the backbone was built (find_family)

    def enable_gradient_checkpointing(self) -> None:
        """Every block of every component (the layers transformers marks as checkpointable) keeps only its
        input in the forward and recomputes the rest in backward: activation memory falls from all of
        every block's intermediates to one tensor per block, for about one more forward per step. The
        non-reentrant form: the same gradients (to float round-off), frozen inputs need no grad, and it
        composes with FSDP2 and ZeRO-3. Generation (eval mode) is unchanged."""
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise ConfigError(
                f"model.gradient_checkpointing=true: transformers' {type(self.model).__name__} ({self.family}) "
                "does not support it"
            )
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def collator(self, max_length: int, generate: bool = False) -> ConversationCollator:
        """Records -> this model's inputs (labels on the answers for training; prompts for generation)."""
        return self.collator_class(self.processor, max_length, generate)

    def num_layers(self, component: str) -> int:
        layers = self.model.get_submodule(self.components.layers[component])
        assert isinstance(layers, nn.ModuleList), f"{component} layers are a {type(layers).__name__}"
        return len(layers)

    def parameter_counts(self) -> dict[str, dict[str, int]]:
        """{component: {"total": n, "trainable": n}} — logged and written to results.json."""
        counts = {c: {"total": 0, "trainable": 0} for c in COMPONENTS}
        for name, p in self.model.named_parameters():
            c = counts[self.components.component_of(name)]
            c["total"] += p.numel()
            c["trainable"] += p.numel() if p.requires_grad else 0
        return counts


def tiny_backbone(
    model: PreTrainedModel,
    processor,
    family: str,
    component_map: Callable[[nn.Module], ComponentMap],
    eos_token_ids: list[int],
) -> Backbone:
    """Wrap a freshly built random model: generation stops at the family's end-of-turn tokens."""
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0]
    return Backbone(
        model=model, processor=processor, family=family, components=component_map(model), source="tiny (random)"
    )
