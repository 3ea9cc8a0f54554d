"""Processors without their video half: image-text fine-tuning must not need torchvision.

Several families' processors (Qwen2/2.5/3-VL, LLaVA-OneVision, SmolVLM, InternVL) carry a video
processor that cannot be built without torchvision, and ``AutoProcessor`` insists on building it.
``image_only(cls)`` is ``cls`` with the video processor left out; ``image_only_loader`` loads such a
processor from a checkpoint directory piece by piece (tokenizer, image processor, the processor's own
settings, chat template) instead of through ``AutoProcessor``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

from transformers import AutoTokenizer, ProcessorMixin

# keys of processor_config.json that describe sub-processors or the class, not the processor's settings
_NOT_SETTINGS = {"image_processor", "video_processor", "processor_class", "auto_map", "chat_template"}


def image_only(processor_class: type, module: str) -> type:
    """A subclass of ``processor_class`` whose video processor is ``None``. Assign it to a global of
    ``module`` under the returned name, so that it pickles (data-loader workers, spawned ranks)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        processor_class.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # some families' overrides read video settings (SmolVLM: num_frames); images need none of it
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    # transformers saves (to_dict) only the settings named in __init__'s signature: keep the parent's
    parent = inspect.signature(processor_class.__init__)
    __init__.__signature__ = parent.replace(
        parameters=[p for n, p in parent.parameters.items() if n != "video_processor"]
    )
    name = f"ImageOnly{processor_class.__name__}"
    return type(
        name,
        (processor_class,),
        {"__init__": __init__, "apply_chat_template": apply_chat_template, "__module__": module, "__qualname__": name},
    )


def image_only_loader(processor_class: type, image_processor_class: type) -> Callable[[str, bool], object]:
    """``load_processor(path, trust_remote_code)`` for an ``image_only`` processor class."""

    def load_processor(path: str, trust_remote_code: bool = False):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        image_processor = image_processor_class.from_pretrained(path)
        settings_file = Path(path) / "processor_config.json"
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        settings = {k: v for k, v in settings.items() if k not in _NOT_SETTINGS}
        template = _chat_template(Path(path)) or getattr(tokenizer, "chat_template", None)
        return processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=template, **settings)

    return load_processor


def _chat_template(path: Path) -> str | None:
    """The processor's template: chat_template.jinja (transformers 5) or chat_template.json (older hub repos)."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text())["chat_template"]
    return None
