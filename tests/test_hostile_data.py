"""Hostile data: input built to slip past the checks (links out of the image root, EXIF rotation,
32-bit images, special tokens written as text, misplaced placeholders, nulls, deep nesting, extreme
aspect ratios, odd sizes). Each is refused at start-up with one line naming what and where, or read
correctly; never a traceback from inside a library, never a silent change of the data."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mllmft.data import HFDataset, LlavaJsonSource, MLLMDataModule
from mllmft.data.collate import IGNORE_INDEX
from mllmft.errors import ConfigError, DataError
from tests.helpers.data_files import llava_dataset, llava_row
from tests.helpers.models import MODEL_CONFIGS, TINY_MODELS


def _setup(processor, source, stage="fit", **kwargs):
    dm = MLLMDataModule(processor, source, batch_size=2, max_length=256, **kwargs)
    dm.setup(stage)
    return dm


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- 1, 2: image paths stay inside their root, links resolved ---------------------------------------


def test_a_link_inside_the_root_to_a_file_outside_is_refused_unless_allowed(tmp_path, tiny_backbone):
    source = llava_dataset(tmp_path, [llava_row(0, image="link.png")])
    Image.new("RGB", (24, 24), "blue").save(tmp_path / "secret.png")
    (tmp_path / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DataError, match=r"record 'r0' .*link.png \(resolves to .*secret.png\) leaves the data root"):
        _setup(tiny_backbone.processor, source)
    _setup(tiny_backbone.processor, source, allow_outside_root=True)
    # a link that stays inside the root is a file inside it
    (tmp_path / "images" / "link.png").unlink()
    (tmp_path / "images" / "link.png").symlink_to(tmp_path / "images" / "img.png")
    _setup(tiny_backbone.processor, source)


def _hf_set(tmp_path, columns: dict, image_feature="string"):
    datasets = pytest.importorskip("datasets")
    features = {
        "picture": datasets.Value("string") if image_feature == "string" else datasets.Image(),
        "q": datasets.Value("string"),
        "a": datasets.Value("string"),
    }
    if "all" in columns:
        features["all"] = datasets.Sequence(datasets.Value("string"))
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    path = tmp_path / "hf"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(path))
    return path


def _hf_source(path, image_root=None, **columns):
    return HFDataset(
        "colours",
        str(path),
        splits={"train": "train"},
        columns={"image": "picture", "question": "q", "answer": "a", **columns},
        image_root=str(image_root) if image_root else None,
    )


def test_hf_dataset_image_paths_obey_the_root_rule_of_data_files(tmp_path, tiny_backbone):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (24, 24), "red").save(root / "ok.png")
    Image.new("RGB", (24, 24), "blue").save(tmp_path / "outside.png")
    path = _hf_set(tmp_path, {"picture": ["ok.png", "../outside.png"], "q": ["Colour?"] * 2, "a": ["red", "blue"]})
    with pytest.raises(DataError, match=r"record 'colours-1' .*outside.png leaves the data root") as err:
        _setup(tiny_backbone.processor, _hf_source(path, root))
    _one_line(err)
    dm = _setup(tiny_backbone.processor, _hf_source(path, root), allow_outside_root=True)
    images = [r.load_images()[0].getpixel((0, 0)) for r in dm.split(dm.target, "train").records]
    assert images == [(255, 0, 0), (0, 0, 255)]
    with pytest.raises(DataError, match=r"column 'picture' holds file paths; set image_root"):
        _hf_source(path).records("train")
    path = _hf_set(tmp_path, {"picture": ["ok.png", None], "q": ["Colour?"] * 2, "a": ["red", "blue"]})
    with pytest.raises(DataError, match=r"record 'colours-1' .*column 'picture' holds None; expected a file path"):
        _hf_source(path, root).records("train")


# --- 3, 4: what decoding does to a picture is what it says ------------------------------------------------


def _image_set(tmp_path, name):
    return llava_dataset(tmp_path, [llava_row(0, image=name)])


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("image_check", ["decode", "header"])
def test_an_exif_orientation_is_applied_and_counted(tmp_path, tiny_backbone, caplog, suffix, image_check):
    (tmp_path / "images").mkdir()
    stored = Image.new("RGB", (40, 20), "red")
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the left half on top
    stored.save(tmp_path / "images" / f"phone{suffix}", exif=exif)
    with caplog.at_level(logging.WARNING):
        dm = _setup(tiny_backbone.processor, _image_set(tmp_path, f"phone{suffix}"), image_check=image_check)
    record = dm.split(dm.target, "train").records[0]
    upright = record.load_images()[0]
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    assert record.image_sizes() == ((20, 40),)  # the header-only size the length check uses agrees
    counted = any("1 image had an EXIF orientation, turned upright" in r.getMessage() for r in caplog.records)
    assert counted == (image_check == "decode")  # what decoding did is counted when it is done at start-up


@pytest.mark.parametrize(
    "values, pixels, note",
    [
        ([0, 100_000, 200_000, 400_000], [0, 64, 128, 255], "were 32-bit integers, their range of values scaled"),
        ([-400_000, -200_000, 0, 400_000], [0, 64, 128, 255], "were 32-bit integers, their range of values scaled"),
        ([0, 257, 32768, 65535], [0, 1, 128, 255], "were 16-bit, scaled to 8 bits"),
    ],
)
def test_32_bit_integer_images_are_scaled_as_the_warning_says(tmp_path, tiny_backbone, caplog, values, pixels, note):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.array([values] * 4, dtype=np.int32)).save(tmp_path / "images" / "deep.tif")
    assert Image.open(tmp_path / "images" / "deep.tif").mode == "I"
    with caplog.at_level(logging.WARNING):
        dm = _setup(tiny_backbone.processor, _image_set(tmp_path, "deep.tif"))
    image = dm.split(dm.target, "train").records[0].load_images()[0]
    assert [image.getpixel((x, 0))[0] for x in range(4)] == pixels
    assert any(f"1 image {note}" in r.getMessage() for r in caplog.records)


# --- 5, 7, 9: the reader of conversation files ------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"messages": [{"role": "user", "content": "<image>Q?"}, {"role": "assistant", "content": "blue"}]},
            r"record 'r0' .*has both 'conversations' and 'messages'; give one",
        ),
        ({"images": ["other.png"]}, r"record 'r0' .*has both 'image' and 'images'; give one"),
    ],
)
def test_a_record_in_both_formats_is_refused_not_half_read(tmp_path, extra, message):
    with pytest.raises(DataError, match=message) as err:
        llava_dataset(tmp_path, [llava_row(0, **extra)]).records("train")
    _one_line(err)


def test_an_image_placeholder_in_a_later_turn_is_refused_not_moved(tmp_path):
    row = llava_row(0)
    row["conversations"] = [
        {"from": "human", "value": "Hello."},
        {"from": "gpt", "value": "Hi."},
        {"from": "human", "value": "<image>\nColour?"},
        {"from": "gpt", "value": "red"},
    ]
    with pytest.raises(DataError, match=r"record 'r0' .*turn 2 \(user\) has an <image> placeholder; .*turn 0"):
        llava_dataset(tmp_path, [row]).records("train")
    row["conversations"][2]["value"] = "Colour?"
    row["conversations"][0]["value"] = "Hello.\n<image>"  # the end of the first turn: LLaVA's convention
    assert llava_dataset(tmp_path, [row]).records("train")[0].turns[0].text == "Hello."


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deeply_nested_json_is_a_one_line_error_naming_the_file(tmp_path, suffix):
    deep = "[" * 100_000 + "]" * 100_000
    text = deep if suffix == ".json" else json.dumps(llava_row(0)) + "\n" + deep
    where = "train.json" if suffix == ".json" else "train.jsonl:2"
    with pytest.raises(DataError, match=rf"{where}: JSON nested too deeply to read") as err:
        llava_dataset(tmp_path, [], suffix, text=text).records("train")
    _one_line(err)


@pytest.mark.parametrize("depth", [300, 900, 990, 2000])
@pytest.mark.parametrize("field", ["image", "conversations", "answers", "task", "id"])
def test_a_deeply_nested_value_in_any_field_is_a_one_line_error(tmp_path, field, depth):
    """Near Python's recursion limit the value may parse and then recurse when a message prints it."""
    row = {**llava_row(0), field: "@"}
    text = json.dumps([row]).replace('"@"', "[" * depth + "]" * depth)
    with pytest.raises(DataError, match=r"train.json") as err:
        llava_dataset(tmp_path, [], text=text).records("train")
    _one_line(err)


# --- 6: special tokens written as text -------------------------------------------------------------------


@pytest.mark.parametrize("token", ["</s>", "<pad>", "<s>"])
@pytest.mark.parametrize("turn", [0, 1])
def test_special_tokens_written_as_text_are_refused(tmp_path, tiny_backbone, token, turn):
    row = llava_row(0, answer=f"red{token} and blue" if turn else "red")
    if turn == 0:
        row["conversations"][0]["value"] = f"<image>\nColour{token}?"
    role = "assistant" if turn else "user"
    with pytest.raises(DataError, match=rf"record 'r0' .*turn {turn} \({role}\) holds '{token}', a special token") as e:
        _setup(tiny_backbone.processor, llava_dataset(tmp_path, [row]))
    _one_line(e)


def test_an_image_token_in_a_hf_question_is_refused(tmp_path, tiny_backbone):
    path = _hf_set(
        tmp_path,
        {"picture": [Image.new("RGB", (24, 24))], "q": ["What is <image>?"], "a": ["x"]},
        image_feature="image",
    )
    with pytest.raises(DataError, match=r"record 'colours-0' .*turn 0 \(user\) holds '<image>'"):
        _setup(tiny_backbone.processor, _hf_source(path))


def test_every_family_refuses_its_end_of_text_token_in_an_answer(tmp_path):
    from mllmft.backbones import build_tiny
    from mllmft.data.record import single_turn

    for name in TINY_MODELS:
        backbone = build_tiny(MODEL_CONFIGS[name].family, MODEL_CONFIGS[name].tiny)
        eos = backbone.processor.tokenizer.eos_token
        record = single_turn("r0", Image.new("RGB", (24, 24)), "Colour?", f"red{eos}blue", "vqa")
        with pytest.raises(DataError, match=rf"turn 1 \(assistant\) holds '{eos}'"):
            backbone.collator(256).check_texts([record])
        backbone.collator(256, generate=True).check_texts([record])  # a reference answer is never encoded


def test_a_special_token_the_encoding_does_not_rely_on_is_the_writers_to_use(tiny_backbone):
    """Grounding data writes tokens such as Qwen's ``<|box_start|>`` on purpose: they encode as themselves."""
    from mllmft.data.record import single_turn

    tiny_backbone.processor.tokenizer.add_tokens(["<|box_start|>"], special_tokens=True)
    collator = tiny_backbone.collator(256)
    collator.check_texts([single_turn("r0", Image.new("RGB", (24, 24)), "Where?", "<|box_start|>(1,2)", "vqa")])
    with pytest.raises(DataError, match=r"holds '</s>'"):
        collator.check_texts([single_turn("r0", Image.new("RGB", (24, 24)), "Where?", "(1,2)</s>", "vqa")])


def _supervised_spans(labels: torch.Tensor) -> list[list[int]]:
    spans: list[list[int]] = [[]]
    for token in labels.tolist():
        if token != IGNORE_INDEX:
            spans[-1].append(token)
        elif spans[-1]:
            spans.append([])
    return [span for span in spans if span]


@pytest.mark.parametrize("answer", ["red and blue", "red</s> and blue", "red<pad><pad>", "</s>", "<s>red"])
def test_labels_never_hold_eos_or_pad_inside_an_answer(tmp_path, tiny_backbone, answer):
    """Each answer's supervised span ends with the one real end of text and holds no padding; an answer
    that would break that is refused at start-up."""
    row = llava_row(0, answer=answer)
    row["conversations"] += [{"from": "human", "value": "Shape?"}, {"from": "gpt", "value": "a square"}]
    source = llava_dataset(tmp_path, [row, llava_row(1, answer="a much longer answer than the other")])
    try:
        dm = _setup(tiny_backbone.processor, source)
    except DataError as err:
        assert "<" in answer and "a special token" in str(err)
        return
    tokenizer = tiny_backbone.processor.tokenizer
    for labels, turns in zip(next(iter(dm.train_dataloader()))["labels"], (2, 1)):
        spans = _supervised_spans(labels)
        assert len(spans) == turns
        for span in spans:
            assert span[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in span[:-1]
            assert tokenizer.pad_token_id not in span


# --- 8: empty cells of HF datasets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column, values, message",
    [
        ("q", ["Colour?", None], r"record 'colours-1' .*column 'q' holds None; expected text"),
        ("a", [None, "blue"], r"record 'colours-0' .*column 'a' holds None; expected text"),
        ("all", [["red"], ["blue", None]], r"record 'colours-1' .*column 'all' holds None; expected text"),
    ],
)
def test_null_questions_and_answers_of_hf_datasets_are_refused(tmp_path, column, values, message):
    columns = {"picture": [Image.new("RGB", (24, 24))] * 2, "q": ["Colour?"] * 2, "a": ["red", "blue"], column: values}
    source = _hf_source(
        _hf_set(tmp_path, columns, image_feature="image"), **({"answers": "all"} if column == "all" else {})
    )
    with pytest.raises(DataError, match=message) as err:
        source.records("train")
    _one_line(err)


# --- 10: images the model's processor refuses -------------------------------------------------------------


def test_an_image_beyond_qwen_vls_aspect_ratio_is_refused_at_start_up(tmp_path):
    from mllmft.backbones import build_tiny

    backbone = build_tiny("qwen2_vl", MODEL_CONFIGS["qwen2_vl_tiny"].tiny)
    source = llava_dataset(tmp_path, [llava_row(0), llava_row(1, image="strip.png")])
    Image.new("RGB", (402, 2), "red").save(tmp_path / "images" / "strip.png")

    def setup(**kwargs):
        dm = MLLMDataModule(backbone.processor, source, batch_size=2, collator_class=backbone.collator_class, **kwargs)
        dm.setup("fit")
        return dm

    message = r"record 'r1' .*\(image of 402x2 pixels\): the model's processor refuses it: .*aspect ratio"
    for image_check in ("decode", "header"):
        with pytest.raises(DataError, match=message) as err:
            setup(image_check=image_check)
        _one_line(err)
    # without the start-up length check, collation says the same, not a traceback from the processor
    with pytest.raises(DataError, match=r"record 'r1' .*402x2 pixels.*the model's processor refuses one of them"):
        next(iter(setup(length_check=False).train_dataloader()))


# --- 11: sizes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.target.sizes.train=0", r"data.target.sizes.train=0; expected an integer >= 1"),
        ("data.target.sizes.val=-3", r"data.target.sizes.val=-3; expected an integer >= 1"),
        ("data.target.sizes.test=2.5", r"data.target.sizes.test=2.5; expected an integer >= 1"),
        ("+data.target.sizes.trian=5", r"data.target.sizes.trian: no such split"),
        ("+data.upstream.shapes.sizes={test: 0}", r"data.upstream.shapes.sizes.test=0"),
    ],
)
def test_sizes_must_be_positive_integers_before_any_model_is_built(compose, override, message):
    from mllmft import build
    from mllmft.changes import change_from_config
    from mllmft.strategies.core.contract import from_config

    cfg = compose(override)
    with pytest.raises(ConfigError, match=message) as err:  # what a run checks before it builds the model
        build.check_settings(cfg, from_config(cfg), change_from_config(cfg))
    _one_line(err)


def test_sizes_of_a_source_built_directly_are_checked_and_null_keeps_all(tmp_path):
    with pytest.raises(ConfigError, match=r"data set 'custom': sizes.train=0; expected an integer >= 1"):
        LlavaJsonSource("custom", str(tmp_path), train="t.json", sizes={"train": 0})
    rows = [llava_row(i) for i in range(3)]
    source = llava_dataset(tmp_path, rows)
    whole = LlavaJsonSource("custom", source.image_root, train=source.files["train"], sizes={"train": None})
    assert len(whole.records("train")) == 3


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("{question} in {langauge}", r"names \['langauge'\]; this reader fills \['\{question\}'\]"),
        ("{0}", r"names \['0'\]"),
        ("{question", "is not a template"),
        (7, "expected text"),
    ],
)
def test_a_prompt_naming_a_field_the_reader_does_not_fill_is_one_line(tmp_path, prompt, message):
    """Once a KeyError at the first record, mid-way through reading."""
    from mllmft.data.vqa_sets import GQA

    with pytest.raises(ConfigError, match=r"data set 'gqa': prompt=" + ".*" + message):
        GQA("gqa", str(tmp_path), {"test": "q.json"}, prompt=prompt)
    GQA("gqa", str(tmp_path), {"test": "q.json"}, prompt="Q: {question} {{literal}}")  # a template that fits
