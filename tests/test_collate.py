import pytest
import torch
from PIL import Image

from mllmft.data import IGNORE_INDEX, ConversationCollator, DataError, Record, ShapesSource, Turn


def _items(records):
    return [(i, r, r.load_images()) for i, r in enumerate(records)]


def _supervised_text(tokenizer, ids, labels):
    return tokenizer.decode(ids[labels != IGNORE_INDEX])


def test_labels_are_exactly_the_answers(tiny_backbone):
    records = ShapesSource(sizes={"train": 6}).records("train")
    batch = ConversationCollator(tiny_backbone.processor, 128)(_items(records))
    ids, labels = batch["model_inputs"]["input_ids"], batch["labels"]
    tok = tiny_backbone.processor.tokenizer
    for s, record in enumerate(records):
        assert _supervised_text(tok, ids[s], labels[s]) == f" {record.answers[0]}</s>"
    image_token = tiny_backbone.processor.image_token_id
    assert (ids == image_token).any()
    assert not (labels == image_token).any()
    assert (labels[batch["model_inputs"]["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_multi_turn_supervises_every_answer_and_no_question(tiny_backbone):
    image = Image.new("RGB", (16, 16), "blue")
    record = Record(
        "mt",
        (image,),
        (
            Turn("user", "What colour?"),
            Turn("assistant", "blue"),
            Turn("user", "And the shape?"),
            Turn("assistant", "a square"),
        ),
        "vqa",
        ("a square",),
    )
    batch = ConversationCollator(tiny_backbone.processor, 128)(_items([record]))
    ids, labels = batch["model_inputs"]["input_ids"][0], batch["labels"][0]
    spans, current = [], []
    for i, label in enumerate(labels.tolist()):
        if label != IGNORE_INDEX:
            current.append(ids[i])
        elif current:
            spans.append(current)
            current = []
    spans.append(current) if current else None
    tok = tiny_backbone.processor.tokenizer
    assert [tok.decode(torch.stack(s)) for s in spans] == [" blue</s>", " a square</s>"]


def test_generation_batch_is_left_padded_prompt_only(tiny_backbone):
    records = ShapesSource(sizes={"test": 4}).records("test")
    batch = ConversationCollator(tiny_backbone.processor, 128, generate=True)(_items(records))
    assert batch["labels"] is None
    assert batch["references"] == [r.answers for r in records]
    mask = batch["model_inputs"]["attention_mask"]
    assert (mask[:, -1] == 1).all()  # left padding: every prompt ends at the last position
    tok = tiny_backbone.processor.tokenizer
    text = tok.decode(batch["model_inputs"]["input_ids"][0], skip_special_tokens=False)
    assert text.endswith("ASSISTANT:") and records[0].answers[0] not in text.split("ASSISTANT:")[-1]


def test_over_long_conversation_is_an_error_naming_the_record(tiny_backbone):
    record = ShapesSource(sizes={"train": 1}).records("train")[0]
    with pytest.raises(DataError, match=r"record 'shapes-train-0'.*more than data.max_length=20"):
        ConversationCollator(tiny_backbone.processor, 20)(_items([record]))
