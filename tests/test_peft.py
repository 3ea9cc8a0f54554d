"""peft strategies: scope x adapter targets, a training step per family and method, exports."""

import json
from pathlib import Path

import peft
import pytest
import torch

from mllmft import api
from mllmft.data import ShapesSource
from mllmft.errors import ConfigError
from mllmft.strategies.adapters.peft_adapters import PEFT_ROOT
from tests.helpers.models import TINY_MODELS, generate

OTHER_METHODS = ["dora", "adalora", "vera", "ia3", "prompt_tuning", "prefix_tuning"]


def _fit(compose, *overrides):
    parts = api.build(compose(*overrides))
    model = parts.backbone.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    return parts, moved


@pytest.mark.parametrize("model", TINY_MODELS)
def test_lora_trains_adapters_and_the_connector_only(compose, model):
    parts, moved = _fit(
        compose, f"model={model}", "strategy=lora", "scope=connector_llm_last2", "trainer.max_steps=2"
    )  # B starts at zero: A moves from the second step
    backbone, strategy = parts.backbone, parts.strategy
    cmap = backbone.components
    assert isinstance(backbone.model, peft.PeftModel)
    trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    assert moved <= trainable
    n_llm = backbone.num_layers("llm")
    for target in strategy.target_modules:  # adapters only on the last 2 LLM blocks the scope trains
        assert cmap.component_of(PEFT_ROOT + target) == "llm"
        assert cmap.layer_of(PEFT_ROOT + target + ".weight", "llm") >= n_llm - 2
    llm_trainable = {n for n in trainable if cmap.component_of(n) == "llm"}
    assert llm_trainable and all(".lora_" in n for n in llm_trainable)
    assert any(".lora_A." in n for n in moved) and any(".lora_B." in n for n in moved)
    assert not {n for n in trainable if cmap.component_of(n) == "vision"}
    connector = {n for n in moved if cmap.component_of(n) == "connector"}
    assert connector, "the connector trains fully (modules_to_save or bare parameters)"
    assert not any(".original_module." in n for n in moved)  # peft's frozen copy stays the base


@pytest.mark.parametrize("model", ["tiny_llava", "idefics3_tiny"])
@pytest.mark.parametrize("method", OTHER_METHODS)
def test_other_peft_methods_take_a_step(compose, model, method):
    parts, moved = _fit(
        compose, f"model={model}", f"strategy={method}", "scope=connector_llm_last2", "trainer.max_steps=2"
    )
    cmap = parts.backbone.components
    assert {cmap.component_of(n) for n in moved} == {"connector", "llm"}
    frozen_base = [
        n for n, p in parts.backbone.model.named_parameters() if cmap.component_of(n) == "llm" and ".base_layer." in n
    ]
    assert not set(frozen_base) & moved
    answers = generate(parts.module, parts.backbone.processor, ShapesSource(sizes={"test": 2}).records("test"))[1]
    assert len(answers) == 2


def test_targets_follow_scope_and_options(compose):
    build = lambda *o: api.build(compose("strategy=lora", *o)).strategy  # noqa: E731
    everything = build("scope=all")
    assert all(".language_model.layers." in t for t in everything.target_modules)  # vision only when asked
    assert "model.vision_tower.encoder" in everything.modules_to_save  # ... else trained fully
    with_vision = build("scope=all", "strategy.adapt=[llm,vision]")
    assert any(".vision_tower." in t for t in with_vision.target_modules)
    picked = build("scope=llm", "strategy.linears=[q_proj,v_proj]", "strategy.layers_to_transform=[0]")
    assert sorted(t.rsplit(".", 1)[-1] for t in picked.target_modules) == ["q_proj", "v_proj"]
    assert all(".layers.0." in t for t in picked.target_modules)
    with pytest.raises(ConfigError, match="no trainable linear"):
        build("scope=connector")


def test_unsupported_family_is_refused_at_start_up(compose):
    from mllmft.backbones import check_family_supports
    from mllmft.strategies import PromptTuning

    with pytest.raises(ConfigError, match="prompt_tuning does not work with the qwen2_5_vl family"):
        api.build(compose("model=qwen2_5_vl_tiny", "strategy=prompt_tuning"))
    mine = PromptTuning()  # a user's own conf/strategy/my_prompts.yaml copied from prompt_tuning's
    mine.name = "my_prompts"
    with pytest.raises(ConfigError, match=r"strategy=my_prompts does not work .*as strategy=prompt_tuning\)$"):
        check_family_supports("qwen2_5_vl", mine)


def test_bad_exports_are_refused_at_start_up(compose):
    with pytest.raises(ConfigError, match="export=adapter needs a peft strategy"):
        api.build(compose("strategy=spider", "export=adapter"))
    with pytest.raises(ConfigError, match=r"^export=merged under FSDP1 \(hardware.lightning_strategy=fsdp\)"):
        api.build(compose("export=merged", "hardware.lightning_strategy=fsdp"))
    with pytest.raises(ConfigError, match="cannot be merged"):
        api.build(compose("strategy=prompt_tuning", "scope=connector_llm_last2", "export=merged"))
    api.build(compose("strategy=commit_lora", "scope=connector_llm", "export=adapter"))  # LoRA inside CoMMIT
    with pytest.raises(ConfigError, match="cannot carry"):  # BLIP-2's query_tokens are a bare parameter
        api.build(compose("model=blip2_tiny", "strategy=lora", "scope=connector_llm_last2", "export=adapter"))


@pytest.mark.parametrize("strategy", ["lora", "spider"])
def test_merged_export_loads_with_plain_transformers(compose, strategy):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mllmft.export import export_model

    options = ["strategy.init=gaussian"] if strategy == "lora" else []
    parts = api.build(
        compose("scope=connector_llm_last2", f"strategy={strategy}", *options, "trainer.max_steps=2", "export=merged")
    )
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    records = ShapesSource(sizes={"test": 3}).records("test")
    logits, answers = generate(parts.module, parts.backbone.processor, records)
    out = export_model(parts.backbone, "merged", parts.trainer.default_root_dir + "/export")
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert not isinstance(model, peft.PeftModel)
    parts.module.model = model
    logits2, answers2 = generate(parts.module, AutoProcessor.from_pretrained(out), records)
    assert answers2 == answers
    torch.testing.assert_close(logits2, logits, rtol=1e-4, atol=1e-4)  # merged weights: float rounding


def test_adapter_export_loads_with_peft(compose):
    from mllmft.backbones import build_tiny
    from mllmft.export import export_model

    cfg = compose(
        "scope=connector_llm_last2", "strategy=lora", "strategy.init=gaussian", "trainer.max_steps=2", "export=adapter"
    )
    parts = api.build(cfg)
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    records = ShapesSource(sizes={"test": 3}).records("test")
    logits, answers = generate(parts.module, parts.backbone.processor, records)
    out = export_model(parts.backbone, "adapter", parts.trainer.default_root_dir + "/export")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == parts.backbone.source  # as named, not a cache path
    base = build_tiny(cfg.model.family, cfg.model.tiny).model  # the same random base (seeded)
    parts.module.model = peft.PeftModel.from_pretrained(base, out)
    logits2, answers2 = generate(parts.module, parts.backbone.processor, records)
    assert answers2 == answers and torch.equal(logits2, logits)


def test_main_job_writes_the_export(compose):
    cfg = compose("strategy=lora", "scope=connector_llm_last2", "export=merged")
    results = api.run(cfg)
    export = Path(results["export"])
    assert export == Path(cfg.paths.output_dir) / "export" and (export / "config.json").is_file()
    assert (export / "model.safetensors").is_file() and not (export / "adapter_config.json").exists()


def test_adalora_scores_importance_once_per_optimizer_step_on_the_whole_gradient(compose):
    """Under gradient accumulation the batches that only accumulate do not call peft's allocator (the
    first one would score importance on half the gradient): steps 0, 1, 2 once each, with gradients."""
    parts = api.build(
        compose(
            "strategy=adalora", "scope=connector_llm_last2", "trainer.max_steps=3", "trainer.accumulate_grad_batches=2"
        )
    )
    tuner = parts.backbone.model.base_model
    allocate, calls = tuner.update_and_allocate, []

    def recording(step):
        grads = [p.grad for n, p in tuner.named_parameters() if "lora_E" in n]
        calls.append((step, all(g is not None and bool(g.any()) for g in grads)))
        return allocate(step)

    tuner.update_and_allocate = recording
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert calls == [(0, True), (1, True), (2, True)]


def test_adalora_reallocates_the_rank_budget(compose):
    # tfinal=1: the last step (index 2 of 3) fixes the budget at target_r per adapted matrix on average
    parts, _ = _fit(
        compose,
        "strategy=adalora",
        "scope=connector_llm_last2",
        "trainer.max_steps=3",
        "strategy.init_r=4",
        "strategy.target_r=2",
        "strategy.tfinal=1",
    )
    config = parts.backbone.model.peft_config["default"]
    ranks = config.rank_pattern
    assert ranks and len(ranks) == len(parts.strategy.target_modules)
    assert sum(sum(mask) for mask in ranks.values()) == 2 * len(ranks)  # from 4 * len(ranks)
