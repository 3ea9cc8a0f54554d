"""module.logits=answers: the LM head on the answer positions only gives the model's own loss and gradients
(fp32, every family, prompt tuning's virtual tokens included) while autograd keeps no logits of other
positions; strategies and objectives that read the logits end where they end with every position's."""

import pytest
import torch

from mllmft import api
from mllmft.answer_logits import AnswerOutputs, AnswerTokens, answer_tokens, supervised
from mllmft.memory import saved_activation_bytes
from tests.helpers.models import TINY_MODELS


def _parts(compose, *overrides):
    parts = api.build(compose("scope=all", *overrides))
    parts.datamodule.setup("fit")
    return parts, next(iter(parts.datamodule.train_dataloader()))


def _loss_and_gradients(net, batch, logits: str) -> tuple[float, dict, int]:
    net.zero_grad(set_to_none=True)
    outputs, saved = saved_activation_bytes(
        lambda: AnswerOutputs(net, batch["model_inputs"], batch["labels"], logits), net
    )
    outputs.loss.backward()
    return (
        float(outputs.loss.detach()),
        {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None},
        saved,
    )


@pytest.mark.parametrize("model", TINY_MODELS)
def test_every_family_gets_the_models_own_loss_and_gradients(compose, model):
    parts, batch = _parts(compose, f"model={model}")
    net = parts.backbone.model.train()
    torch.manual_seed(0)
    every_loss, every, kept_every = _loss_and_gradients(net, batch, "all")
    torch.manual_seed(0)  # the same dropout, where a family has any
    answers_loss, answers, kept_answers = _loss_and_gradients(net, batch, "answers")
    assert answers_loss == pytest.approx(every_loss, abs=1e-6)
    assert every.keys() == answers.keys()
    assert max((every[k] - answers[k]).abs().max().item() for k in every) <= 1e-6
    labels = batch["labels"]
    vocab = net.get_output_embeddings().weight.shape[0]
    every_position_logits = labels.shape[0] * labels.shape[1] * vocab * 4
    assert kept_answers < kept_every - 0.5 * every_position_logits, (kept_answers, kept_every)


def test_the_tokens_are_those_of_every_positions_logits(compose):
    parts, batch = _parts(compose)
    net = parts.backbone.model.eval()
    with torch.no_grad():
        every = AnswerTokens.of(net(**batch["model_inputs"]).logits, batch["labels"])
        answers = answer_tokens(net, batch["model_inputs"], batch["labels"])
    assert answers.logits.shape == (int(supervised(batch["labels"]).sum()), every.logits.shape[1])
    torch.testing.assert_close(answers.logits, every.logits, rtol=0, atol=1e-5)
    assert torch.equal(answers.targets, every.targets) and torch.equal(answers.rows, every.rows)
    assert net.get_output_embeddings()._forward_pre_hooks == {}  # the hook is gone after the forward


def test_prompt_tunings_virtual_tokens_are_skipped(compose):
    parts, batch = _parts(compose, "strategy=prompt_tuning")
    net = parts.backbone.model.eval()
    with torch.no_grad():
        every = AnswerTokens.of(net(**batch["model_inputs"]).logits, batch["labels"])
        answers = answer_tokens(net, batch["model_inputs"], batch["labels"])
    torch.testing.assert_close(answers.logits, every.logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "setting",
    [
        ["strategy=full", "objective=asft"],
        ["strategy=lora", "scope=connector_llm", "objective=eaft"],
        ["strategy=commit", "scope=connector_llm", "strategy.every_k=1"],
    ],
)
def test_what_reads_the_logits_ends_where_every_positions_logits_end(compose, setting):
    def fit(logits: str) -> dict:
        parts = api.build(compose(*setting, "trainer.max_steps=3", f"module.logits={logits}"))
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
        return {n: p.detach() for n, p in parts.backbone.model.named_parameters() if p.requires_grad}

    every, answers = fit("all"), fit("answers")
    assert max((every[k] - answers[k]).abs().max().item() for k in every) <= 1e-5


def test_an_unknown_choice_is_one_line(compose):
    with pytest.raises(Exception, match=r"module.logits='some'; expected one of answers, all"):
        api.build(compose("module.logits=some"))
