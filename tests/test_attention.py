"""model.attn_implementation: checked at start-up against the family and the machine; eager and sdpa train the
same model to the same loss."""

import pytest
import torch

from mllmft import api
from mllmft.errors import ConfigError


@pytest.mark.parametrize(
    "name, message",
    [
        ("fast", r"model.attn_implementation='fast'; expected one of \['sdpa', 'eager'"),
        (
            "flash_attention_2",
            "model.attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn package",
        ),
        ("flex_attention", "model.attn_implementation=flex_attention: FlexAttention has no backward on the CPU"),
    ],
)
def test_an_attention_this_machine_cannot_run_is_refused_before_any_model_is_built(compose, monkeypatch, name, message):
    if name != "fast" and torch.cuda.is_available():
        pytest.skip("a GPU machine may run it")
    monkeypatch.setattr("mllmft.build.build_backbone", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(ConfigError, match=f"^{message}"):
        api.build(compose(f"model.attn_implementation={name}"))


def test_a_family_that_lacks_an_attention_is_refused():
    from mllmft.backbones import check_attention

    with pytest.raises(ConfigError, match="Qwen2VLForConditionalGeneration does not support it"):
        check_attention("qwen2_vl", "flex_attention", on_gpu=True, trains=True)  # transformers: no flex for it
    check_attention("llava", "eager", on_gpu=False, trains=True)


def test_eager_and_sdpa_train_to_the_same_loss(compose):
    losses = {}
    for name in ("eager", "sdpa"):
        parts = api.build(compose(f"model.attn_implementation={name}"))
        net = parts.backbone.model
        assert net.config._attn_implementation == name
        parts.datamodule.setup("fit")
        batch = next(iter(parts.datamodule.train_dataloader()))
        losses[name] = net(**batch["model_inputs"], labels=batch["labels"]).loss.item()
    assert losses["eager"] == pytest.approx(losses["sdpa"], abs=1e-6)
