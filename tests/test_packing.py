"""module.packing: a batch's samples laid end to end give each sample the loss it has in the padded batch
(every family that packs, one row or several), train to the same weights, and are refused where the
family's attention or the strategy cannot take them."""

import pytest
import torch

from mllmft import api
from mllmft.answer_logits import answer_tokens, supervised
from mllmft.backbones import FAMILIES
from mllmft.errors import ConfigError
from mllmft.packing import pack, rows_of, text_positions
from tests.helpers.models import MODEL_CONFIGS, TINY_MODELS

PACKS = [m for m in TINY_MODELS if FAMILIES[MODEL_CONFIGS[m].family].packing_positions is not None]
REFUSED = [m for m in TINY_MODELS if m not in PACKS]


def test_by_default_a_row_is_no_longer_than_the_padded_batch(compose):
    parts, batch = _batch(compose, "tiny_llava")
    inputs = batch["model_inputs"]
    packed, _ = pack(inputs, batch["labels"], None, text_positions, parts.backbone.model)
    assert packed["input_ids"].shape[1] <= inputs["input_ids"].shape[1]
    assert packed["input_ids"].shape[0] <= inputs["input_ids"].shape[0]


def test_rows_are_filled_in_order_and_a_long_sample_has_its_own():
    assert rows_of([3, 4, 2, 9, 1, 1], capacity=8) == [[0, 1], [2], [3], [4, 5]]
    assert rows_of([2, 2, 2], capacity=100) == [[0, 1, 2]]


def test_the_families_that_pack_are_the_llava_qwen_internvl_and_idefics_ones():
    assert {MODEL_CONFIGS[m].family for m in REFUSED} == {"blip2", "instructblip", "paligemma"}


def _batch(compose, model: str, batch_size: int = 6):
    parts = api.build(compose(f"model={model}", f"data.batch_size={batch_size}"))
    parts.datamodule.setup("fit")
    return parts, next(iter(parts.datamodule.train_dataloader()))


def _per_sample_losses(tokens, samples: torch.Tensor) -> torch.Tensor:
    """Each sample's mean cross-entropy over its answer tokens (``samples``: the sample of each token)."""
    nll = torch.nn.functional.cross_entropy(tokens.logits, tokens.targets, reduction="none")
    return torch.stack([nll[samples == s].mean() for s in samples.unique()])


@pytest.mark.parametrize("model", PACKS)
def test_each_sample_keeps_its_loss_in_one_row_or_several(compose, model):
    parts, batch = _batch(compose, model)
    net, positions = parts.backbone.model.eval(), FAMILIES[parts.backbone.family].packing_positions
    inputs, labels = batch["model_inputs"], batch["labels"]
    lengths = inputs["attention_mask"].sum(1)
    with torch.no_grad():
        padded = answer_tokens(net, inputs, labels)
        for capacity in (int(lengths.sum()), int(lengths.max()) * 2):  # one row; several
            packed_inputs, packed_labels = pack(inputs, labels, capacity, positions, net)
            assert "attention_mask" not in packed_inputs
            assert packed_inputs["input_ids"].numel() <= inputs["input_ids"].numel()
            packed = answer_tokens(net, packed_inputs, packed_labels)
            assert torch.equal(packed.targets, padded.targets)  # the answer tokens, in the padded batch's order
            torch.testing.assert_close(packed.logits, padded.logits, rtol=0, atol=1e-5)
            samples = padded.rows  # the padded batch's rows are its samples
            torch.testing.assert_close(
                _per_sample_losses(packed, samples), _per_sample_losses(padded, samples), rtol=0, atol=1e-5
            )


def test_a_sample_does_not_see_another(compose):
    """Change the first sample's tokens: the second sample's logits in the packed row do not move."""
    parts, batch = _batch(compose, "tiny_llava", batch_size=2)
    net, positions = parts.backbone.model.eval(), FAMILIES["llava"].packing_positions
    inputs, labels = batch["model_inputs"], batch["labels"]
    first = int(inputs["attention_mask"][0].sum())

    def second_sample_logits(ids: torch.Tensor) -> torch.Tensor:
        packed_inputs, packed_labels = pack({**inputs, "input_ids": ids}, labels, 10**6, positions, net)
        assert packed_inputs["input_ids"].shape[0] == 1  # one row: the samples side by side
        with torch.no_grad():
            tokens = answer_tokens(net, packed_inputs, packed_labels)
        second = supervised(packed_labels).nonzero()[:, 1] >= first  # predictions inside the second sample
        assert second.any() and not second.all()
        return tokens.logits[second]

    changed = inputs["input_ids"].clone()
    text = changed[0, :first] != parts.backbone.processor.image_token_id
    changed[0, :first][text] = changed[0, :first][text].flip(0)
    assert not torch.equal(changed, inputs["input_ids"])
    torch.testing.assert_close(
        second_sample_logits(changed), second_sample_logits(inputs["input_ids"]), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    "setting",
    [
        ["strategy=full"],
        ["strategy=spider"],
        ["strategy=lora", "scope=connector_llm", "strategy.dropout=0", "objective=asft"],  # dropout draws per shape
        ["model=qwen2_vl_tiny", "strategy=full"],
    ],
)
def test_training_on_packed_batches_ends_where_padded_batches_end(compose, setting):
    def fit(packing: bool) -> dict:
        packed = [f"module.packing={packing}", "module.pack_tokens=512"]  # rows of several samples
        parts = api.build(compose(*setting, "trainer.max_steps=3", *packed))
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
        return {n: p.detach() for n, p in parts.backbone.model.named_parameters() if p.requires_grad}

    padded, packed = fit(False), fit(True)
    assert max((padded[k] - packed[k]).abs().max().item() for k in padded) <= 1e-5


@pytest.mark.parametrize("model", REFUSED)
def test_a_family_that_cannot_pack_is_refused_with_why(compose, model):
    with pytest.raises(ConfigError, match=r"module.packing=true does not work with the \w+ family: its "):
        api.build(compose(f"model={model}", "module.packing=true"))


@pytest.mark.parametrize("strategy", ["prompt_tuning", "prefix_tuning"])
def test_virtual_tokens_are_refused_with_why(compose, strategy):
    with pytest.raises(ConfigError, match=rf"module.packing=true does not work with strategy={strategy}: peft puts"):
        api.build(compose(f"strategy={strategy}", "module.packing=true"))


def test_bad_settings_are_one_line(compose):
    with pytest.raises(ConfigError, match="module.packing='yes'; expected true or false"):
        api.build(compose("module.packing=yes"))
    with pytest.raises(ConfigError, match="module.pack_tokens"):
        api.build(compose("module.packing=true", "module.pack_tokens=0"))
