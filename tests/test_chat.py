"""mllmft-chat answers as the test phase does, from an export, an adapter or a training checkpoint."""

from __future__ import annotations

import json

import pytest

from mllmft import api
from mllmft.chat import answer
from mllmft.data import DigitsSource
from mllmft.errors import ConfigError, DataError
from mllmft.run import run
from tests.helpers.runs import FAST, SMALL_LLAVA


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short LoRA run with an adapter export, its checkpoint and its test predictions, plus the
    first digits test image as a PNG file."""
    out = tmp_path_factory.mktemp("chat")
    cfg = api.compose(
        [
            *FAST,
            *SMALL_LLAVA,
            f"paths.cache_dir={out / 'cache'}",
            "strategy=lora",
            "strategy.init=gaussian",
            "scope=connector_llm",
            "trainer.max_steps=3",
            "export=adapter",
            "callbacks=default",
            "~callbacks.rich_progress_bar",
            "~callbacks.lr_monitor",
        ],
        output_dir=out / "run",
    )
    run(cfg)
    record = DigitsSource(sizes={"train": 16, "val": 8, "test": 10}).records("test")[0]
    record.load_images()[0].save(out / "digit.png")
    predictions = [json.loads(line) for line in (out / "run" / "predictions" / "final-digits.jsonl").open()]
    expected = next(p for p in predictions if p["id"] == record.id)
    return out, record.prompt_turns[-1].text, expected["prediction"]


def _chat(out, *overrides):
    return api.compose(
        [*FAST, *SMALL_LLAVA, f"paths.cache_dir={out / 'cache'}", f"image={out / 'digit.png'}", *overrides],
        config_name="chat",
        output_dir=out / "chat",
    )


@pytest.mark.parametrize("source", ["adapter", "checkpoint"])
def test_chat_answers_as_the_test_phase_did(trained, source):
    out, prompt, prediction = trained
    where = (
        [f"adapter={out / 'run' / 'export'}"]
        if source == "adapter"
        else [
            f"ckpt_path={out / 'run' / 'checkpoints' / 'last.ckpt'}",
            "strategy=lora",
            "strategy.init=gaussian",
            "scope=connector_llm",
        ]
    )
    assert answer(_chat(out, f"prompt={prompt}", *where)) == prediction


def test_chat_takes_a_list_of_images(trained):
    out, prompt, prediction = trained
    adapter = f"adapter={out / 'run' / 'export'}"
    png = out / "digit.png"
    assert answer(_chat(out, f"prompt={prompt}", adapter, f"image=[{png}]")) == prediction  # a list of one
    assert isinstance(answer(_chat(out, f"prompt={prompt}", adapter, f"image=[{png},{png}]")), str)


def test_chat_refuses_what_it_cannot_use(trained, tmp_path):
    out, prompt, _ = trained
    with pytest.raises(DataError, match="image file not found"):
        answer(_chat(out, f"prompt={prompt}", f"image={tmp_path / 'nope.png'}"))
    with pytest.raises(ConfigError, match="adapter_config.json"):
        answer(_chat(out, f"prompt={prompt}", f"adapter={tmp_path}"))
    with pytest.raises(ConfigError, match="strategy"):  # a LoRA checkpoint needs strategy=lora
        answer(
            _chat(
                out, f"prompt={prompt}", f"ckpt_path={out / 'run' / 'checkpoints' / 'last.ckpt'}", "scope=connector_llm"
            )
        )


def test_eval_of_a_peft_checkpoint_without_its_strategy_is_refused(trained):
    """Loaded with strict=False, its adapter tensors would be dropped and the base model tested."""
    out, _, _ = trained
    cfg = api.compose(
        [
            *FAST,
            *SMALL_LLAVA,
            f"paths.cache_dir={out / 'cache'}",
            "scope=connector_llm",
            f"ckpt_path={out / 'run' / 'checkpoints' / 'last.ckpt'}",
        ],
        config_name="eval",
        output_dir=out / "eval",
    )
    with pytest.raises(ConfigError, match="strategy=lora"):
        api.build(cfg)
