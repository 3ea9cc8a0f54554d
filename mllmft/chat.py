"""``mllmft-chat``: ask a model one question about an image (or several), from the command line.

    mllmft-chat image=cat.png prompt="What shape is this?"                 # the configured model
    mllmft-chat model.checkpoint=logs/train/runs/<run>/export image=... prompt=...   # an export, HF dir, hub id
    mllmft-chat adapter=<run>/export image=... prompt=...                  # a peft adapter on the base
    mllmft-chat ckpt_path=<run>/checkpoints/last.ckpt image=... prompt=... # a training checkpoint
    mllmft-chat image=[left.png,right.png] prompt="Which is larger?"      # several images, in order

The prompt goes through the family's chat template with the images, as in testing; the answer is greedy.
A training checkpoint must belong to this model, scope and strategy (a peft run's: ``strategy=lora``).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from mllmft.cli import user_errors_exit
from mllmft.config import CONF_DIR


def answer(cfg: DictConfig) -> str:
    """The model's answer to ``cfg.prompt`` about ``cfg.image`` (a path, or a list of paths)."""
    import torch

    from mllmft.build import build_backbone, pretrain_stage
    from mllmft.checkpoint_match import check_checkpoint, read_checkpoint, run_identity
    from mllmft.data.images import MAX_IMAGE_PIXELS
    from mllmft.data.record import Record, Turn
    from mllmft.data.test_set import TestSet
    from mllmft.errors import ConfigError
    from mllmft.module import MLLMFineTuner
    from mllmft.scope import apply_scope
    from mllmft.strategies.core.contract import from_config

    if not str(cfg.prompt).strip():
        raise ConfigError("prompt= is empty")
    image_paths = chat_images(cfg.image)
    strategy = from_config(cfg)
    backbone = build_backbone(cfg.model, pretrain_stage(cfg))
    apply_scope(backbone, cfg.scope)
    identity = run_identity(backbone, cfg.scope, strategy.name)
    strategy.attach(backbone)
    if cfg.get("adapter"):
        import peft

        if not (Path(cfg.adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"adapter={cfg.adapter}: no adapter_config.json there (an export=adapter directory)")
        backbone.model = peft.PeftModel.from_pretrained(backbone.model, cfg.adapter)
    module = MLLMFineTuner(
        backbone,
        strategy,
        cfg.scope,
        test_sets=[TestSet("chat")],
        max_new_tokens=cfg.max_new_tokens,
        run_identity=identity,
    )
    if cfg.get("ckpt_path"):
        checkpoint = read_checkpoint(cfg.ckpt_path)
        check_checkpoint(checkpoint, identity, cfg.ckpt_path, resuming=False, model_state=module.state_dict())
        module.load_state_dict(checkpoint["state_dict"], strict=False)  # trainable tensors; the rest is the base
    record = Record(
        id="chat",
        images=image_paths,
        turns=(Turn("user", str(cfg.prompt)), Turn("assistant", "")),
        task="vqa",
        answers=("",),
        origin="the command line",
    )
    backbone.collator_class.check_image_counts([record])
    images = record.load_images(MAX_IMAGE_PIXELS)
    batch = backbone.collator(cfg.data.max_length, generate=True)([(0, record, images)])
    module.eval()
    with torch.no_grad():
        return module.generate(batch["model_inputs"])[0]


def chat_images(image) -> tuple[Path, ...]:
    """``image=``: an image file, or a non-empty list of them (each file is read with the record)."""
    from omegaconf import ListConfig

    from mllmft.errors import ConfigError

    paths = list(image) if isinstance(image, (ListConfig, list, tuple)) else [image]
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise ConfigError(
            f"image={image!r}; expected an image file or a non-empty list of them "
            "(image=cat.png, image=[left.png,right.png])"
        )
    return tuple(Path(p) for p in paths)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="chat")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    print(answer(cfg))


if __name__ == "__main__":
    main()
