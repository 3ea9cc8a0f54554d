"""The papers' recipes (conf/experiment/<method>_llava15_7b.yaml) are what the papers publish.

Each recipe is composed, its LLaVA-1.5-7B built on the meta device (no weights, no memory), its scope
applied, and its data read from the readers' fixtures with the tiny model's processor. The expected
numbers below are the papers' (sources in each YAML's comments), written here apart from the YAML."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from mllmft.backbones import FAMILIES, Backbone, build_meta
from mllmft.scope import apply_scope, param_groups
from mllmft.strategies.core.contract import from_config
from tests.helpers.data_files import write_general_benchmarks, write_reader_layout

# LLaVA-1.5-7B: a Vicuna-7B decoder layer (4 attention and 3 MLP matrices, 2 RMSNorm gains) and the projector
LAYER = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
LAYER_MATRICES = LAYER - 2 * 4096
PROJECTOR = 1024 * 4096 + 4096 + 4096 * 4096 + 4096
LLM = 32 * LAYER + 2 * 32064 * 4096 + 4096  # 32 layers, embeddings and head (vocabulary 32,064), final norm
SPIDER_SETS = {"okvqa": "vqa_accuracy", "textvqa": "vqa_accuracy", "gqa": "exact_match", "ocrvqa": "exact_match"}

PAPERS = {
    # SPIDER: projector at 2e-5 + last 2 LLM layers at 2e-4, global batch 16, 3-5 epochs, ZeRO-3
    "spider_llava15_7b": {
        "strategy": "spider",
        "gradient_checkpointing": True,  # LLaVA-1.5's stage-2 script, which the authors' trainer inherits
        "global_batch": 16,
        "epochs": 3,
        "zero_stage": 3,
        "lr": {"connector": 2e-5, "llm": 2e-4},
        "trainable": PROJECTOR + 2 * LAYER,
        "sets": {"flickr30k": "caption", **SPIDER_SETS},
    },
    # Model-Dowser: last 20 layers, lr 2e-5, 5 epochs, 8 x 2 x 8 = 128, rho 0.1, ZeRO-3; "~4.05B" masked entries
    "model_dowser_llava15_7b": {
        "strategy": "model_dowser",
        "gradient_checkpointing": True,  # the paper's memory setting
        "global_batch": 128,
        "epochs": 5,
        "zero_stage": 3,
        "lr": {"llm": 2e-5},
        "trainable": 20 * LAYER,
        "targeted": 20 * LAYER_MATRICES,
        "ratio": 0.1,
        "sets": {"coco_caption": "caption", **SPIDER_SETS, "mmbench_en": "mmbench", "mmbench_cn": "mmbench"},
    },
    # CoMMIT: LoRA tuning of LLaVA-1.5 on TextVQA (values: LLaVA-1.5's LoRA recipe, marked as an assumption)
    "commit_llava15_7b": {
        "strategy": "commit_lora",
        "gradient_checkpointing": True,  # LLaVA-1.5's LoRA script
        "global_batch": 16,
        "epochs": 1,
        "zero_stage": 2,
        # the scope before LoRA freezes the LLM's base weights and adds its adapters
        "lr": {"connector": 2e-5, "llm": 2e-4},
        "trainable": PROJECTOR + LLM,
        "lora": (128, 256),
        "sets": {"textvqa": "vqa_accuracy", "okvqa": "vqa_accuracy", "gqa": "exact_match", "ocrvqa": "exact_match"},
    },
}


@pytest.mark.parametrize("recipe", sorted(PAPERS))
def test_recipe_is_the_published_one(compose, tmp_path, tiny_backbone, recipe):
    paper = PAPERS[recipe]
    data_dir = tmp_path / "data"
    if any(name.startswith("mmbench") for name in paper["sets"]):
        write_general_benchmarks(data_dir)  # first: it makes the folders the others add to
    for name in paper["sets"]:
        if not name.startswith("mmbench"):
            write_reader_layout(data_dir, name)
    cfg = compose(f"experiment={recipe}", f"paths.data_dir={data_dir}", fast=False)
    assert cfg.model.name == "llava15_7b" and cfg.model.dtype == "bfloat16"
    assert cfg.hardware.precision == "bf16-mixed"
    assert cfg.hardware.lightning_strategy.config.zero_optimization.stage == paper["zero_stage"]
    assert cfg.model.gradient_checkpointing is paper["gradient_checkpointing"]

    global_batch = (
        cfg.data.batch_size * cfg.hardware.devices * cfg.hardware.num_nodes * cfg.trainer.accumulate_grad_batches
    )
    assert global_batch == paper["global_batch"]
    assert cfg.trainer.max_epochs == paper["epochs"] and cfg.trainer.max_steps == -1
    schedule = cfg.module.scheduler
    assert (cfg.module.weight_decay, schedule.warmup_ratio, schedule.min_lr_ratio) == (0.0, 0.03, 0.0)

    meta = build_meta(cfg.model.family, OmegaConf.to_container(cfg.model.architecture, resolve=True))
    backbone = Backbone(
        model=meta,
        processor=None,
        family=cfg.model.family,
        components=FAMILIES[cfg.model.family].component_map(meta),
        source="meta",
    )
    apply_scope(backbone, cfg.scope)
    counts = backbone.parameter_counts()
    assert sum(c["trainable"] for c in counts.values()) == paper["trainable"]
    assert counts["vision"]["trainable"] == 0  # every recipe keeps the vision tower frozen
    lrs = {g["name"]: g["lr"] for g in param_groups(backbone, cfg.scope, cfg.module.lr, cfg.module.weight_decay)}
    assert {k: v for k, v in lrs.items() if not k.endswith("no_decay")} == pytest.approx(paper["lr"])

    strategy = from_config(cfg)
    assert strategy.name == paper["strategy"]
    if "ratio" in paper:
        assert strategy.ratio == paper["ratio"]
        layers = backbone.components.layers["llm"]
        targeted = sum(
            m.weight.numel()
            for n, m in meta.named_modules()
            if isinstance(m, nn.Linear)
            and n.startswith(layers + ".")
            and n.rsplit(".", 1)[-1] in strategy.targets
            and m.weight.requires_grad
        )
        assert targeted == paper["targeted"]
    if "lora" in paper:
        assert (cfg.strategy.base.r, cfg.strategy.base.alpha) == paper["lora"]

    # the paper's target and upstream sets, each with its metric, read from the readers' fixtures
    dm = instantiate(cfg.data, _partial_=True, num_workers=0, image_check="header")(processor=tiny_backbone.processor)
    dm.setup("test")
    assert {t.name: t.metric["name"] for t in dm.test_sets} == paper["sets"]
