import pytest
import torch

from mllmft.backbones import load_pretrained
from mllmft.data import ConversationCollator, ShapesSource
from mllmft.errors import CheckpointNotFoundError
from mllmft.scope import apply_scope, param_groups


def test_inert_vision_params_follow_the_feature_layer(tiny_backbone):
    # feature layer -1: only post_layernorm is unused
    assert tiny_backbone.components.inert == ("model.vision_tower.post_layernorm",)
    model = tiny_backbone.model
    model.config.vision_feature_layer = -2
    from mllmft.backbones.llava import component_map

    assert component_map(model).inert == ("model.vision_tower.encoder.layers.1", "model.vision_tower.post_layernorm")


SCOPES = {
    "all": {"vision": {"train": True}, "connector": {"train": True}, "llm": {"train": True}},
    "connector_llm_last2": {
        "vision": {"train": False},
        "connector": {"train": True, "lr_scale": 0.1},
        "llm": {"train": True, "last_n_layers": 2},
    },
}


def test_scope_all_trains_everything_but_inert(tiny_backbone):
    apply_scope(tiny_backbone, SCOPES["all"])
    frozen = [n for n, p in tiny_backbone.model.named_parameters() if not p.requires_grad]
    assert frozen == ["model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"]


def test_spider_scope_trains_projector_and_last_two_layers(tiny_backbone):
    apply_scope(tiny_backbone, SCOPES["connector_llm_last2"])
    trainable = {n for n, p in tiny_backbone.model.named_parameters() if p.requires_grad}
    assert all(
        n.startswith(("model.multi_modal_projector", "model.language_model.layers.2", "model.language_model.layers.3"))
        for n in trainable
    )
    assert any("layers.3" in n for n in trainable) and any("projector" in n for n in trainable)
    groups = {g["name"]: g for g in param_groups(tiny_backbone, SCOPES["connector_llm_last2"], 1e-3, 0.01)}
    assert set(groups) == {"connector", "connector.no_decay", "llm", "llm.no_decay"}
    assert groups["connector"]["lr"] == pytest.approx(1e-4) and groups["llm"]["lr"] == pytest.approx(1e-3)
    assert groups["llm.no_decay"]["weight_decay"] == 0.0 and groups["llm"]["weight_decay"] == 0.01
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)


def test_scope_errors_are_clear(tiny_backbone):
    with pytest.raises(ValueError, match=r"last_n_layers=9; expected an integer in \[1, 4\]"):
        apply_scope(tiny_backbone, {"llm": {"train": True, "last_n_layers": 9}})
    with pytest.raises(ValueError, match="unknown components \\['decoder'\\]"):
        apply_scope(tiny_backbone, {"decoder": {"train": True}})
    with pytest.raises(ValueError, match="unknown keys \\['lr'\\]"):
        apply_scope(tiny_backbone, {"llm": {"train": True, "lr": 1}})


def _logits(backbone, records):
    batch = ConversationCollator(backbone.processor, 128, generate=True)(
        [(i, r, r.load_images()) for i, r in enumerate(records)]
    )
    with torch.no_grad():
        return batch["model_inputs"]["input_ids"], backbone.model(**batch["model_inputs"]).logits


def test_save_pretrained_round_trip(tiny_backbone, tmp_path):
    tiny_backbone.model.save_pretrained(tmp_path)
    tiny_backbone.processor.save_pretrained(tmp_path)
    loaded = load_pretrained("llava", tmp_path)
    assert loaded.model.training  # ready to fine-tune
    assert loaded.components == tiny_backbone.components
    records = ShapesSource(sizes={"test": 3}).records("test")
    tiny_backbone.model.eval()
    loaded.model.eval()
    ids_a, logits_a = _logits(tiny_backbone, records)
    ids_b, logits_b = _logits(loaded, records)
    assert torch.equal(ids_a, ids_b) and torch.equal(logits_a, logits_b)


def test_missing_checkpoint_fails_at_once_with_instructions(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="neither a local directory nor in the Hugging Face cache"):
        load_pretrained("llava", "nobody/no-such-model")
    with pytest.raises(ValueError, match="unknown model family 'gpt'"):
        load_pretrained("gpt", tmp_path)
