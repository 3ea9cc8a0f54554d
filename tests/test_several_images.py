"""Records with several images: read from both file formats, trained on and generated from by every
family whose model reads several, refused at start-up by the families that read one."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mllmft import api
from mllmft.data import IGNORE_INDEX, DataError, MLLMDataModule, Record, Turn
from mllmft.data.llava_json import LlavaJsonSource
from tests.helpers.models import TINY_MODELS, items


def _pair(first: str, second: str, rid: str = "pair") -> Record:
    turns = (Turn("user", "Which one is red?"), Turn("assistant", "the first"))
    images = (Image.new("RGB", (40, 40), first), Image.new("RGB", (48, 32), second))
    return Record(rid, images, turns, "vqa", ("the first",))


def _single() -> Record:
    turns = (Turn("user", "Colour?"), Turn("assistant", "green"))
    return Record("single", (Image.new("RGB", (40, 40), "green"),), turns, "vqa", ("green",))


def _write_set(tmp_path, rows) -> LlavaJsonSource:
    for colour in ("red", "blue"):
        Image.new("RGB", (24, 24), colour).save(tmp_path / f"{colour}.png")
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return LlavaJsonSource("pairs", str(tmp_path), train=str(tmp_path / "train.jsonl"))


def test_both_file_formats_read_several_images_in_order(tmp_path):
    llava = {
        "id": "a",
        "image": ["red.png", "blue.png"],
        "conversations": [{"from": "human", "value": "<image>\n<image>\nWhich is red?"}, {"from": "gpt", "value": "1"}],
    }
    swift = {
        "id": "b",
        "images": ["red.png", "blue.png"],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which is red?"}],
            },
            {"role": "assistant", "content": "1"},
        ],
    }
    no_placeholders = {
        **llava,
        "id": "c",
        "conversations": [{"from": "human", "value": "Which is red?"}, llava["conversations"][1]],
    }
    records = _write_set(tmp_path, [llava, swift, no_placeholders]).records("train")
    for record in records:
        assert record.images == (tmp_path / "red.png", tmp_path / "blue.png")
        assert record.turns[0].text == "Which is red?"
        assert [image.getpixel((0, 0)) for image in record.load_images()] == [(255, 0, 0), (0, 0, 255)]


@pytest.mark.parametrize(
    "value, message",
    [
        ("<image>\nWhich is red?", r"record 'a' .*1 <image> placeholder for 2 images"),
        ("<image> <image> <image> Which?", r"3 <image> placeholders for 2 images"),
        ("Left: <image> right: <image> Which is red?", r"placeholders must open it; images interleaved"),
    ],
)
def test_placeholders_that_disagree_with_the_images_are_refused(tmp_path, value, message):
    row = {
        "id": "a",
        "image": ["red.png", "blue.png"],
        "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "1"}],
    }
    with pytest.raises(DataError, match=message):
        _write_set(tmp_path, [row]).records("train")


def test_an_image_outside_the_root_is_named_even_when_it_is_not_the_first(tmp_path):
    row = {
        "id": "a",
        "image": ["red.png", "../elsewhere.png"],
        "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "1"}],
    }
    processor = api.build(api.compose(["model=tiny_llava", "model.pretrain=null"])).backbone.processor
    with pytest.raises(DataError, match=r"record 'a' .*image path .*elsewhere.png leaves the data root"):
        MLLMDataModule(processor, _write_set(tmp_path, [row]), max_length=256).setup("fit")


@pytest.mark.parametrize("model", TINY_MODELS)
def test_every_family_reads_each_of_several_images_or_refuses_them_at_start_up(compose, tmp_path, model):
    backbone = api.build(compose(f"model={model}")).backbone
    collator_class = backbone.collator_class
    if collator_class.max_images is not None:  # BLIP-2, InstructBLIP: one image per record
        row = {
            "id": "a",
            "image": ["red.png", "blue.png"],
            "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "1"}],
        }
        with pytest.raises(DataError, match=r"record 'a' .*2 images, but this model family reads at most 1"):
            MLLMDataModule(
                backbone.processor, _write_set(tmp_path, [row]), max_length=256, collator_class=collator_class
            ).setup("fit")
        return
    model_ = backbone.model
    # trained on: the answers are supervised and nothing else; a batch mixes two images and one
    batch = backbone.collator(512)(items([_pair("red", "blue"), _single()]))
    ids, labels = batch["model_inputs"]["input_ids"], batch["labels"]
    tokenizer = backbone.processor.tokenizer
    assert tokenizer.decode(ids[0][labels[0] != IGNORE_INDEX]).strip().startswith("the first")
    assert tokenizer.decode(ids[1][labels[1] != IGNORE_INDEX]).strip().startswith("green")
    loss = model_(**batch["model_inputs"], labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()

    # generated from: each image is read (changing the second changes the model's output)
    def logits(second: str) -> torch.Tensor:
        inputs = backbone.collator(512, generate=True)(items([_pair("red", second)]))["model_inputs"]
        with torch.no_grad():
            return model_.eval()(**inputs).logits[0, -1]

    assert not torch.allclose(logits("blue"), logits("yellow"))


def test_a_run_trains_and_tests_on_a_set_of_image_pairs(compose, tmp_path):
    """The whole job (start-up checks, training, zero-shot and final test) on a data file whose
    records have two images each."""
    rows = [
        {
            "id": f"p{i}",
            "image": ["red.png", "blue.png"] if i % 2 else ["blue.png", "red.png"],
            "conversations": [
                {"from": "human", "value": "Which one is red?"},
                {"from": "gpt", "value": ("second", "first")[i % 2]},
            ],
        }
        for i in range(8)
    ]
    source = _write_set(tmp_path, rows)
    files = [f"data.target.{split}={source.files['train']}" for split in ("train", "val", "test")]
    results = api.run(
        compose(
            "data=llava_json", f"data.target.image_root={tmp_path}", *files, "data.num_workers=0", "zeroshot_test=true"
        )
    )
    assert results["global_steps"] == 2 and set(results["scores"]["final"]) == {"custom"}
    predictions = (tmp_path / "run" / "predictions" / "final-custom.jsonl").read_text().splitlines()
    assert len(predictions) == 8
