"""LoRASculpt and KORE against their specs written out: LoRASculpt's factors hold exactly the configured
share after the warm-up and keep it, its regulariser is the formula; KORE's initial adapter leaves the model
unchanged, lies in the null space of the calibration inputs, and its down-projection never moves."""

import math

import pytest
import torch
from peft.tuners.lora import LoraLayer

from mllmft import api
from mllmft.errors import ConfigError
from mllmft.strategies.adapters.kore import input_covariances


def _fit(compose, *overrides):
    parts = api.build(compose(*overrides))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    return parts


def _factors(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def test_lorasculpts_factors_keep_their_share_after_the_warm_up_and_stay_there(compose):
    overrides = ("strategy=lorasculpt", "strategy.init=gaussian", "strategy.keep=0.25", "strategy.sparsify_after=2")
    before = _factors(_fit(compose, *overrides, "trainer.max_steps=1").backbone.model)
    assert all(int((t != 0).sum()) > 0.5 * t.numel() for t in before.values())  # dense during the warm-up
    parts = _fit(compose, *overrides, "trainer.max_steps=5")
    factors = _factors(parts.backbone.model)
    for name, t in factors.items():
        assert int((t != 0).sum()) == math.floor(0.25 * t.numel()), name
    kept = parts.strategy.kept
    assert set(kept) == set(factors)
    for name, t in factors.items():  # the same entries as chosen at step 2: zero outside them
        assert not t[~kept[name].view_as(t)].any()


def test_lorasculpts_regulariser_is_the_formula(compose):
    parts = api.build(compose("strategy=lorasculpt", "strategy.init=gaussian", "strategy.car_lambda=0.5"))
    strategy, model = parts.strategy, parts.backbone.model
    terms = []
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj"):
            w0 = layer.base_layer.weight.double()
            m = torch.tanh(torch.abs(1 / torch.log(w0.abs() / w0.norm() + 1e-15)))
            ba = layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
            terms.append(float((m * ba).pow(2).sum().sqrt()))
    assert len(terms) == len(strategy.regularised) > 0
    module = parts.module
    module.log = lambda *a, **k: None  # outside a trainer
    car = strategy.extra_loss(module, {"ids": [0]}, None)
    assert float(car) == pytest.approx(0.5 * sum(terms) / len(terms), rel=1e-5)


def test_lorasculpt_without_its_regulariser_shards_and_with_it_says_why(compose):
    with pytest.raises(ConfigError, match="strategy=lorasculpt runs on one device or under DDP"):
        api.build(compose("strategy=lorasculpt", "hardware=fsdp2_cpu"))
    api.build(compose("strategy=lorasculpt", "strategy.car_lambda=0", "hardware=fsdp2_cpu"))


def _kore(compose, *overrides):
    return api.build(compose("strategy=kore", "strategy.samples=8", *overrides))


def test_kores_initial_adapter_leaves_the_model_as_it_was(compose):
    plain = api.build(compose("strategy=full"))
    kore = _kore(compose)
    plain.datamodule.setup("fit")
    batch = next(iter(plain.datamodule.train_dataloader()))
    with torch.no_grad():
        expected = plain.backbone.model.eval()(**batch["model_inputs"]).logits
        got = kore.backbone.model.eval()(**batch["model_inputs"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_kores_down_projection_is_orthogonal_to_the_calibration_inputs_top_directions(compose):
    parts = _kore(compose)
    model, strategy = parts.backbone.model, parts.strategy
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    # the covariance again, from the same prompts, on the plain model (no adapters): an independent reading
    plain = api.build(compose("strategy=full"))
    covariances = input_covariances(plain.backbone, list(layers), strategy.calibration_prompts(plain.backbone))
    r = strategy.options["r"]
    for name, layer in layers.items():
        values, vectors = torch.linalg.eigh(covariances[name])
        top = vectors[:, -(vectors.shape[1] - r) :]  # every direction but the null space's r
        a = layer.lora_A["default"].weight.double()
        assert "weight" not in dict(layer.lora_A["default"].named_parameters())  # a buffer: it cannot train
        leak = (a @ top).norm() / a.norm()
        assert leak < 1e-6, (name, float(leak))


def test_kores_down_projection_never_moves_and_its_update_spares_the_calibration_inputs(compose):
    parts = _kore(compose, "trainer.max_steps=3")
    model = parts.backbone.model
    before = {n: b.clone() for n, b in model.named_buffers() if ".lora_A." in n}
    up = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_B." in n}
    assert before and up
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers() if n in before)
    assert any(not torch.equal(up[n], p) for n, p in model.named_parameters() if n in up)


def test_kore_needs_upstream_data_and_room_for_its_null_space(compose):
    with pytest.raises(Exception, match="strategy.calibration .data.upstream by default. is empty"):
        api.build(compose("strategy=kore", "data.upstream=null"))
    with pytest.raises(ConfigError, match="strategy.r=128 leaves no null space"):
        api.build(compose("strategy=kore", "strategy.r=128"))


def test_kores_adapters_hold_part_of_the_base_so_what_needs_the_base_says_so(compose):
    with pytest.raises(ConfigError, match="export=adapter saves the adapters for the original base"):
        _kore(compose, "export=adapter")
    with pytest.raises(
        ConfigError, match="objective=asft compares with the base model, which this strategy's adapters"
    ):
        _kore(compose, "objective=asft")
    with pytest.raises(ConfigError, match="export=merged under fsdp2: kore's frozen adapter factors are buffers"):
        _kore(compose, "export=merged", "hardware=fsdp2_cpu")
    with pytest.raises(Exception, match="strategy.init=pissa: KORE sets the adapters itself"):
        _kore(compose, "strategy.init=pissa")
    # the forgetting probe's base: the untrained model with its adapters on (equal to the pre-trained one)
    parts = _kore(compose, "probe.samples=4")
    plain = api.build(compose("probe.samples=4"))
    for ours, theirs in zip(parts.trainer.callbacks, plain.trainer.callbacks):
        if hasattr(ours, "sets"):
            torch.testing.assert_close(
                ours.sets[0].top_log_probs[0], theirs.sets[0].top_log_probs[0], atol=1e-4, rtol=0
            )
