"""Loading MLLM backbones by family: real checkpoints with from_pretrained, tiny ones from config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mllmft.backbones.backbone import COMPONENTS, FAMILIES, Backbone, ComponentMap, Family
from mllmft.backbones.blip2 import BLIP2, INSTRUCTBLIP
from mllmft.backbones.idefics3 import IDEFICS3, SMOLVLM
from mllmft.backbones.internvl import INTERNVL
from mllmft.backbones.llava import LLAVA
from mllmft.backbones.llava_next import LLAVA_NEXT, LLAVA_ONEVISION
from mllmft.backbones.paligemma import PALIGEMMA
from mllmft.backbones.qwen_vl import QWEN2_5_VL, QWEN2_VL, QWEN3_VL
from mllmft.config import import_object
from mllmft.errors import CheckpointNotFoundError, ConfigError

FAMILIES.update(  # the built-in families; find_family adds a user's own
    (f.name, f)
    for f in (
        LLAVA,
        LLAVA_NEXT,
        LLAVA_ONEVISION,
        QWEN2_VL,
        QWEN2_5_VL,
        QWEN3_VL,
        PALIGEMMA,
        IDEFICS3,
        SMOLVLM,
        INTERNVL,
        BLIP2,
        INSTRUCTBLIP,
    )
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = [
    "COMPONENTS",
    "Backbone",
    "ComponentMap",
    "FAMILIES",
    "Family",
    "build_meta",
    "build_tiny",
    "check_attention",
    "check_family_supports",
    "find_family",
    "load_pretrained",
    "model_dtype",
]


def build_meta(family: str, architecture: dict) -> torch.nn.Module:
    """A real-size model with no memory behind it (``meta`` device), from architecture values stored in
    the repo: parameter counts and component maps can be checked offline without any download."""
    fam = find_family(family)
    config = fam.model_class.config_class(**architecture)
    with torch.device("meta"):
        return fam.model_class(config)


def find_family(name: str) -> Family:
    """The family ``model.family`` names: a built-in one (a key of ``FAMILIES``), or your own as the
    dotted path of a ``Family`` object (``my_package.families.MY_FAMILY``), registered under its
    ``name`` on first use so that everything that looks a family up by name finds it."""
    if name in FAMILIES:
        return FAMILIES[name]
    if "." not in name:
        raise ConfigError(
            f"unknown model family {name!r}; available: {sorted(FAMILIES)}, or the dotted path "
            "of a Family object of your own"
        )
    found = import_object(name, "model.family")
    if not isinstance(found, Family):
        raise ConfigError(f"model.family={name!r} is a {type(found).__name__}, not a mllmft.backbones.Family")
    if FAMILIES.setdefault(found.name, found) is not found:
        raise ConfigError(f"model.family={name!r} is named {found.name!r}, which is already another family's name")
    return found


def check_family_supports(family: str, strategy) -> None:
    """A strategy the family declares it cannot run (by its ``strategy=`` name) is refused before anything is
    built; so is any other config of the same class (your own YAML copied from a refused one)."""
    unsupported = find_family(family).unsupported
    why = unsupported.get(strategy.name)
    for name, reason in unsupported.items():
        if why is None and isinstance(strategy, _configured_class(name)):
            why = f"{reason} (it is a {type(strategy).__name__}, as strategy={name})"
    if why is not None:
        raise ConfigError(f"strategy={strategy.name} does not work with the {family} family: {why}")


def _configured_class(name: str) -> type:
    """The class ``conf/strategy/<name>.yaml`` builds (a name of no built-in config: nothing's class)."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from mllmft.config import CONF_DIR

    path = CONF_DIR / "strategy" / f"{name}.yaml"
    target = OmegaConf.load(path).get("_target_") if path.is_file() else None
    return get_class(target) if target else type(None)


def model_dtype(name: str) -> torch.dtype:
    """The torch dtype ``model.dtype`` names."""
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def build_tiny(family: str, spec: Mapping, dtype: str = "float32", attn_implementation: str | None = None) -> Backbone:
    """A random tiny model whose tokenizer covers the built-in data sets' text, its weights in ``dtype``."""
    from mllmft.data import CountingSource, DigitsSource, PositionsSource, ShapesSource

    corpus = [
        text for source in (ShapesSource, PositionsSource, CountingSource, DigitsSource) for text in source().corpus()
    ]
    backbone = find_family(family).build_tiny(dict(spec), corpus)
    backbone.model.to(model_dtype(dtype))
    if attn_implementation:
        backbone.model.set_attn_implementation(attn_implementation)
    return backbone


ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def check_attention(family: str, name: str | None, on_gpu: bool, trains: bool) -> None:
    """``model.attn_implementation`` (None: transformers' default, sdpa) that the family's model class and
    this machine can run: refused at start-up, before any model is loaded, with the reason."""
    if name is None:
        return
    if name not in ATTENTION:
        raise ConfigError(f"model.attn_implementation={name!r}; expected one of {list(ATTENTION)} (or null: sdpa)")
    model_class = find_family(family).model_class
    supports = {"sdpa": "_supports_sdpa", "flex_attention": "_supports_flex_attn"}.get(name, "_supports_flash_attn")
    if name != "eager" and not getattr(model_class, supports, False):
        raise ConfigError(f"model.attn_implementation={name}: transformers' {model_class.__name__} does not support it")
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available, is_torch_flex_attn_available

    if name.startswith("flash_attention"):
        installed = is_flash_attn_2_available() if name.endswith("2") else is_flash_attn_3_available()
        if not (on_gpu and installed):
            package = "flash-attn" if name.endswith("2") else "flash-attn 3 (flash_attn_interface)"
            raise ConfigError(f"model.attn_implementation={name} needs a CUDA GPU and the {package} package")
    if name == "flex_attention" and not is_torch_flex_attn_available():
        raise ConfigError("model.attn_implementation=flex_attention needs torch's FlexAttention (torch >= 2.5)")
    if name == "flex_attention" and trains and not on_gpu:  # measured: NotImplementedError in backward
        raise ConfigError(
            "model.attn_implementation=flex_attention: FlexAttention has no backward on the CPU; train with "
            "sdpa or eager here, or on a GPU"
        )


def load_pretrained(
    family: str,
    checkpoint: str | Path,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> Backbone:
    """Load a checkpoint directory (or an already-cached hub id) saved in the HF format."""
    fam = find_family(family)
    torch_dtype = model_dtype(dtype)
    local = Path(checkpoint)
    if local.is_dir() and not (local / "config.json").is_file():
        raise CheckpointNotFoundError(
            f"model.checkpoint={checkpoint}: the directory has no config.json, so it is not "
            "a Hugging Face model directory (save one with save_pretrained)"
        )
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            checkpoint,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        if fam.load_processor is not None:
            processor = fam.load_processor(checkpoint, trust_remote_code)
        else:
            processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    except Exception as err:
        if local.is_dir():  # a damaged directory: a truncated or corrupted weights file, bad JSON, ...
            raise ConfigError(
                f"model.checkpoint={checkpoint}: cannot load it ({type(err).__name__}: {_first_line(err)})"
            ) from err
        if not isinstance(err, OSError):
            raise
        raise CheckpointNotFoundError(
            f"model.checkpoint={checkpoint!r} is neither a local directory nor in the Hugging Face cache "
            f"({err.__class__.__name__}). Download it once where there is network "
            f"(`hf download {checkpoint} --local-dir DIR`) and set model.checkpoint=DIR, or unset "
            "HF_HUB_OFFLINE to let transformers fetch it."
        ) from err
    # from_pretrained returns eval mode; a fine-tuning run starts in train mode (dropout on), and
    # Lightning's evaluation loops put it back after each test/validation.
    model.train()
    if model.config.model_type not in fam.model_types:
        raise ConfigError(
            f"{checkpoint} holds a {model.config.model_type!r} model, not a {family!r} one; "
            "set model.family to match it"
        )
    if getattr(processor, "chat_template", None) is None and fam.chat_template is not None:
        processor.chat_template = fam.chat_template
    return Backbone(
        model=model, processor=processor, family=fam.name, components=fam.component_map(model), source=str(checkpoint)
    )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
