"""Every tiny model family: component maps, label masking, a training step, generation, save/load."""

import pytest
import torch
from omegaconf import OmegaConf

from mllmft import api
from mllmft.backbones import COMPONENTS, load_pretrained
from mllmft.data import IGNORE_INDEX, ShapesSource
from tests.helpers.models import MODEL_CONFIGS, REAL_MODELS, TINY_MODELS, generate, items
from tests.helpers.runs import UPSTREAM


@pytest.mark.parametrize("model", TINY_MODELS)
def test_components_partition_the_parameters(compose, model):
    backbone = api.build(compose(f"model={model}")).backbone
    cmap, params = backbone.components, dict(backbone.model.named_parameters())
    owners = {n: cmap.component_of(n) for n in params}  # raises for a parameter of no component
    for component in COMPONENTS:
        assert any(c == component for c in owners.values()), f"{model}: empty {component}"
    counts = backbone.parameter_counts()
    assert sum(c["total"] for c in counts.values()) == sum(p.numel() for p in params.values())
    for component, path in cmap.layers.items():  # every block of a layer list sits in its component
        assert all(owners[n] == component for n in params if n.startswith(path + "."))
    if model.startswith("qwen"):  # the projector sits inside the vision module
        assert {c for n, c in owners.items() if ".merger." in n} == {"connector"}


@pytest.mark.parametrize("model", TINY_MODELS)
def test_labels_are_exactly_the_answers(compose, model):
    backbone = api.build(compose(f"model={model}")).backbone
    records = ShapesSource(sizes={"train": 4}).records("train")
    collator = backbone.collator(256)
    batch = collator(items(records))
    ids, labels = batch["model_inputs"]["input_ids"], batch["labels"]
    tok = backbone.processor.tokenizer
    for s, record in enumerate(records):
        supervised = tok.decode(ids[s][labels[s] != IGNORE_INDEX])
        assert supervised.strip().startswith(record.answers[0]), supervised
        assert record.turns[0].text not in supervised
    assert collator.image_token_id is not None and (ids == collator.image_token_id).any()
    assert not (labels == collator.image_token_id).any()
    if "qformer_input_ids" in batch["model_inputs"]:  # InstructBLIP's Q-Former reads the prompt, not the answer
        qformer = batch["model_inputs"]["qformer_input_ids"]
        for s, record in enumerate(records):
            instruction = backbone.processor.qformer_tokenizer.decode(qformer[s], skip_special_tokens=True)
            assert record.turns[0].text in instruction and record.answers[0] not in instruction, instruction


def test_paligemma_answers_are_the_causal_suffix(compose):
    from mllmft.data import DataError, Record, Turn

    backbone = api.build(compose("model=paligemma_tiny")).backbone
    records = ShapesSource(sizes={"train": 4}).records("train")
    batch = backbone.collator(256)(items(records))
    inputs, labels = batch["model_inputs"], batch["labels"]
    # the prompt (image, BOS, text) is the full-attention prefix; the answer + EOS the causal suffix,
    # which is exactly what is supervised (padding aside)
    suffix = (inputs["token_type_ids"] == 1) & (inputs["attention_mask"] == 1)
    assert torch.equal(labels != IGNORE_INDEX, suffix)
    generation = backbone.collator(256, generate=True)(items(records))["model_inputs"]
    assert not generation["token_type_ids"].any()
    two_turns = Record(
        id="q7",
        turns=(Turn("user", "a?"), Turn("assistant", "b"), Turn("user", "c?"), Turn("assistant", "d")),
        images=records[0].images,
        task="vqa",
        answers=("d",),
        origin="set.json",
    )
    with pytest.raises(DataError, match="q7.*one prompt and one answer"):
        backbone.collator(256)(items([two_turns]))


@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("scope", ["connector_llm_last2", "llm"])
def test_training_step_generation_and_round_trip(compose, tmp_path, model, scope):
    parts = api.build(compose(f"model={model}", f"scope={scope}", "trainer.max_steps=1"))
    model_ = parts.backbone.model
    before = {n: p.detach().clone() for n, p in model_.named_parameters()}
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    moved = {n for n, p in model_.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model_.named_parameters() if p.requires_grad}
    assert moved <= trainable
    # every trainable component moved (a random frozen vision tower can leave a tensor or two with a
    # vanishing first gradient, e.g. BLIP-2's cross-attention keys over near-identical patch features)
    cmap = parts.backbone.components
    assert {cmap.component_of(n) for n in moved} == {cmap.component_of(n) for n in trainable}
    records = ShapesSource(sizes={"test": 3}).records("test")
    logits, answers = generate(parts.module, parts.backbone.processor, records)
    assert len(answers) == 3
    model_.save_pretrained(tmp_path / "export")
    parts.backbone.processor.save_pretrained(tmp_path / "export")
    family = parts.backbone.family
    reloaded = load_pretrained(family, tmp_path / "export")
    parts.module.model = reloaded.model
    logits2, answers2 = generate(parts.module, reloaded.processor, records)
    assert torch.equal(logits, logits2) and answers == answers2


def test_every_family_has_a_tiny_and_a_real_config():
    from mllmft.backbones import FAMILIES

    assert {MODEL_CONFIGS[m].family for m in TINY_MODELS} == set(FAMILIES)
    assert {MODEL_CONFIGS[m].family for m in REAL_MODELS} == set(FAMILIES)


def test_qwen_pretraining_path_caches_and_reloads(compose, tmp_path):
    pretrain = (
        "model.pretrain={source: {_target_: mllmft.data.ShapesSource, sizes: {train: 8, test: 4}}, "
        "max_steps: 2, batch_size: 4, lr: 1.0e-3}"
    )
    backbone = api.build(compose("model=qwen2_5_vl_tiny", pretrain)).backbone
    assert backbone.info["pretrain"]["steps"] == 2 and backbone.family == "qwen2_5_vl"
    assert type(backbone.processor).__name__ == "ImageOnlyQwen2VLProcessor"


@pytest.mark.parametrize("model", REAL_MODELS)
def test_real_configs_match_published_sizes_on_the_meta_device(compose, model):
    from mllmft.backbones import FAMILIES, build_meta

    cfg = compose(f"model={model}").model
    meta = build_meta(cfg.family, OmegaConf.to_container(cfg.architecture, resolve=True))
    params = dict(meta.named_parameters())
    assert all(p.device.type == "meta" for p in params.values())
    total = sum(p.numel() for p in params.values())
    assert total == pytest.approx(cfg.published_params, rel=0.01), f"{model}: {total / 1e9:.3f} B"
    cmap = FAMILIES[cfg.family].component_map(meta)
    owners = {cmap.component_of(n) for n in params}  # every parameter has exactly one component
    assert owners == set(COMPONENTS)
    if cfg.family == "llava":  # feature layer -2: the last vision block is never used
        assert cmap.inert[0].endswith("layers.23")


@pytest.mark.parametrize("model", ["tiny_llava", "qwen2_5_vl_tiny", "paligemma_tiny", "smolvlm_tiny", "blip2_tiny"])
def test_the_main_job_runs_with_the_family(compose, model):
    # the built-in job (zero-shot test, fine-tune on digits, test on digits + the drawn skills), small and random
    results = api.run(compose(f"model={model}", "zeroshot_test=true"))
    assert results["run"]["family"] == MODEL_CONFIGS[model].family and results["global_steps"] == 2
    for phase in ("zeroshot", "final"):
        assert set(results["scores"][phase]) == {"digits", *UPSTREAM}
    assert {"H", "E", "F", "O"} <= set(results["tradeoff"]["final"])


def test_image_only_loader_reads_older_hub_layouts(compose, tmp_path):
    # hub repos from before transformers 5 keep the template in chat_template.json and the image
    # processor in preprocessor_config.json; the processor's own settings stay in processor_config.json
    import json

    from mllmft.backbones import FAMILIES

    backbone = api.build(compose("model=llava_onevision_tiny")).backbone
    processor = backbone.processor
    processor.save_pretrained(tmp_path)
    template = (tmp_path / "chat_template.jinja").read_text()
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    settings = json.loads((tmp_path / "processor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings.pop("image_processor")))
    (tmp_path / "processor_config.json").write_text(json.dumps(settings))
    loaded = FAMILIES["llava_onevision"].load_processor(str(tmp_path))
    assert loaded.chat_template == template and loaded.num_image_tokens == processor.num_image_tokens
    assert loaded.image_processor.image_grid_pinpoints == processor.image_processor.image_grid_pinpoints


PRESET_MODULES = {  # written out per convention: Llama's names and OPT's (BLIP-2)
    "llm_attention": {"q_proj", "k_proj", "v_proj", "o_proj", "out_proj"},
    "llm_mlp_gate_up": {"gate_proj", "up_proj", "fc1"},
}


@pytest.mark.parametrize("model", TINY_MODELS)
def test_component_presets_train_exactly_their_modules_of_every_llm_block(compose, model):
    for scope, wanted in PRESET_MODULES.items():
        backbone = api.build(compose(f"model={model}", f"scope={scope}")).backbone
        cmap = backbone.components
        for name, param in backbone.model.named_parameters():
            expected = (
                cmap.component_of(name) == "llm"
                and cmap.layer_of(name, "llm") is not None
                and name.split(".")[-2] in wanted
            )
            assert param.requires_grad == expected, (scope, name)
        assert any(p.requires_grad for p in backbone.model.parameters()), scope


def test_a_preset_the_layers_cannot_express_is_refused(compose):
    from mllmft.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"^scope.llm.modules='heads'; expected one of \['attention', 'mlp_gate_up'\]"
    ):
        api.build(compose("scope=llm_attention", "scope.llm.modules=heads"))
    with pytest.raises(ConfigError, match="^scope.vision.modules=attention: the llava family's vision layers name"):
        api.build(compose("scope=llm_attention", "~scope.vision", "+scope.vision={train: true, modules: attention}"))
