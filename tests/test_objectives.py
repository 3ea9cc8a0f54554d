"""Training objectives (objective=): each loss against its paper's formula written out in numpy on a
hand-made batch, its gradient where a stop-gradient matters, the base distribution of ASFT, and runs."""

import json

import numpy as np
import pytest
import torch

from mllmft import api
from mllmft.answer_logits import AnswerTokens, answer_tokens
from mllmft.errors import ConfigError
from mllmft.objectives import SFT
from mllmft.objectives.token_weighted import dft_loss, eaft_loss, kl_to_base
from mllmft.report import label

IGNORE = -100
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(2, 5, 7)) * 2  # [batch, time, vocabulary]
LABELS = np.array([[IGNORE, IGNORE, 3, 5, 1], [IGNORE, 2, 2, IGNORE, IGNORE]])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _answer_positions():
    """(logits at t, token at t + 1) for every supervised next token, written out by hand."""
    rows = [(b, t) for b in range(2) for t in range(4) if LABELS[b, t + 1] != IGNORE]
    return np.stack([LOGITS[b, t] for b, t in rows]), np.array([LABELS[b, t + 1] for b, t in rows])


def _tokens(requires_grad=False):
    logits = torch.tensor(LOGITS, requires_grad=requires_grad)
    return logits, AnswerTokens.of(logits, torch.tensor(LABELS))


def test_answer_tokens_are_the_shifted_supervised_positions():
    z, y = _answer_positions()
    _, tokens = _tokens()
    np.testing.assert_array_equal(tokens.targets.numpy(), y)
    np.testing.assert_allclose(tokens.logits.numpy(), z, rtol=1e-6)


def test_dft_is_the_probability_weighted_cross_entropy_with_the_weight_held():
    z, y = _answer_positions()
    p = _softmax(z)
    p_y = p[np.arange(len(y)), y]
    logits, tokens = _tokens(requires_grad=True)
    loss = dft_loss(tokens)
    assert float(loss.detach()) == pytest.approx(np.mean(-p_y * np.log(p_y)), rel=1e-6)
    loss.backward()
    # sg(p_y): d/dz of −p_y·log p_y with p_y a constant is −p_y (onehot − p), over the N tokens
    expected = -(p_y[:, None] * (np.eye(7)[y] - p)) / len(y)
    rows = [(b, t) for b in range(2) for t in range(4) if LABELS[b, t + 1] != IGNORE]
    np.testing.assert_allclose(np.stack([logits.grad[b, t].numpy() for b, t in rows]), expected, atol=1e-6)


@pytest.mark.parametrize("k, alpha", [(3, 1.0), (5, 0.5), (7, 2.0)])
def test_eaft_weights_each_token_by_its_normalised_top_k_entropy(k, alpha):
    z, y = _answer_positions()
    top = np.sort(z, axis=-1)[:, -k:]
    q = _softmax(top)
    weight = (-(q * np.log(q)).sum(-1) / np.log(k)) ** alpha
    log_p = np.log(_softmax(z)[np.arange(len(y)), y])
    _, tokens = _tokens()
    assert float(eaft_loss(tokens, k, alpha)) == pytest.approx(np.mean(-weight * log_p), rel=1e-6)


def test_eaft_with_alpha_zero_is_plain_cross_entropy():
    _, tokens = _tokens()
    expected = torch.nn.functional.cross_entropy(tokens.logits, tokens.targets)
    assert float(eaft_loss(tokens, 4, 0.0)) == pytest.approx(float(expected), rel=1e-6)


def test_kl_to_base_is_the_forward_kl_over_the_vocabulary():
    z, _ = _answer_positions()
    base = z + RNG.normal(size=z.shape)
    p, b = _softmax(z), _softmax(base)
    _, tokens = _tokens()
    expected = np.mean((p * (np.log(p) - np.log(b))).sum(-1))
    assert float(kl_to_base(tokens, torch.tensor(base))) == pytest.approx(expected, rel=1e-6)
    assert float(kl_to_base(tokens, tokens.logits)) == 0.0


# --- in a run ---------------------------------------------------------------------------------------
def _batch(parts):
    parts.datamodule.setup("fit")
    return next(iter(parts.datamodule.train_dataloader()))


def test_sft_is_the_models_own_loss_bit_for_bit(compose):
    parts = api.build(compose())
    assert isinstance(parts.module.objective, SFT)
    batch = _batch(parts)
    outputs = parts.module.model(**batch["model_inputs"], labels=batch["labels"])
    assert parts.module.objective.loss(parts.module, batch, outputs)[0] is outputs.loss


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_asft_kl_is_zero_for_the_base_and_follows_the_images(compose, strategy):
    """The base is a frozen copy (full) or the model without its adapters (lora); it sees the batch's
    images, so the KL term changes with them (a base fed text only would not)."""
    parts = api.build(
        compose("objective=asft", f"strategy={strategy}", *(["strategy.init=gaussian"] * (strategy == "lora")))
    )
    module, batch = parts.module, _batch(parts)
    module.model.eval()

    def kl(images):
        inputs = {**batch["model_inputs"], "pixel_values": images}
        tuned = answer_tokens(module.model, inputs, batch["labels"])
        base = module.objective.base_tokens(module, {**batch, "model_inputs": inputs})
        return float(kl_to_base(tuned, base.logits))

    images = batch["model_inputs"]["pixel_values"]
    if strategy == "full":
        assert kl(images) == 0.0  # nothing trained yet: π_θ = π_base
    with torch.no_grad():  # a tuned model: every trainable weight moved a little
        for p in module.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    assert kl(images) > 0
    assert kl(images) != pytest.approx(kl(torch.flip(images, dims=[-1])), rel=1e-3)


@pytest.mark.parametrize("objective", ["dft", "eaft", "asft"])
@pytest.mark.parametrize("strategy", ["spider", "lora"])
def test_every_objective_trains_with_spider_and_lora_and_is_recorded(compose, tmp_path, objective, strategy):
    from mllmft.run import run

    results = run(compose(f"objective={objective}", f"strategy={strategy}", "zeroshot_test=false"))
    assert results["status"] == "complete" and results["global_steps"] == 2
    assert results["run"]["objective"]["name"] == objective
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert label(saved) == f"{strategy} + {objective}"


def test_asft_without_adapters_is_refused_on_a_sharded_engine_at_start_up(compose):
    with pytest.raises(ConfigError, match="objective=asft without adapters keeps an unsharded copy"):
        api.build(compose("objective=asft", "strategy=spider", "hardware=fsdp2_cpu"))


def test_objective_knobs_are_checked(compose):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match=r"objective.k=1; expected an integer >= 2"):
        api.build(compose("objective=eaft", "objective.k=1"))
