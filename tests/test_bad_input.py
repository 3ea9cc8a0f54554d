"""Bad input is refused at start-up with one line naming what and where, or converted as documented
and reported; never a traceback from inside a library, never a silent change."""

import json
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mllmft.data import LlavaJsonSource, MLLMDataModule
from mllmft.errors import ConfigError, DataError, UserInputError
from tests.helpers.data_files import llava_dataset, llava_row
from tests.helpers.models import TINY_MODELS
from tests.helpers.runs import CKPT, NO_UPSTREAM


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming a huge image, with no pixel data to speak of."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _setup(processor, source, **kwargs):
    dm = MLLMDataModule(processor, source, batch_size=2, max_length=256, **kwargs)
    dm.setup("fit")
    return dm


# --- records: types, keys, ids, paths ---------------------------------------------------------------


def test_a_lone_answer_string_is_one_reference_not_its_characters(tmp_path, tiny_backbone):
    dm = _setup(tiny_backbone.processor, llava_dataset(tmp_path, [llava_row(0, answers="red")]))
    assert dm.split(dm.target, "train").records[0].answers == ("red",)


@pytest.mark.parametrize(
    "row, message",
    [
        ({**llava_row(0), "image": None}, r"record 'r0' .*'image' must be a file path or a list of them, got null"),
        (
            {**llava_row(0), "image": ["a.png", 3]},
            r"'image' must be a file path or a list of them, got \[\"a.png\", 3\]",
        ),
        ({**llava_row(0), "image": []}, r"'image' must be a file path or a list of them, got \[\]"),
        ({**llava_row(0), "image": ["img.png", "img.png"]}, r"1 <image> placeholder for 2 images"),
        ({**llava_row(0), "conversations": "hello"}, r"'conversations' must be a list of turns, got \"hello\""),
        (
            {**llava_row(0), "conversations": [{"from": "human", "value": 7}, {"from": "gpt", "value": "x"}]},
            r"turn 0's 'value' must be a string, got 7",
        ),
        ({**llava_row(0), "conversations": ["hi", "there"]}, r"turn 0 must be an object"),
        ({**llava_row(0), "answers": [1, 2]}, r"'answers' must be a list of strings, got \[1, 2\]"),
        ({**llava_row(0), "answers": {"a": 1}}, r"'answers' must be a list of strings"),
        ({**llava_row(0), "id": [1]}, r"'id' must be a string or an integer"),
        ({**llava_row(0), "task": 5}, r"unknown task 5"),
        (
            {**llava_row(0, answer="C"), "task": "multiple_choice", "options": ["x", "y"]},
            r"not the letter of one of its 2",
        ),
        ("just a string", r"a record must be a JSON object, got str"),
    ],
)
def test_wrong_types_are_one_line_errors_naming_the_record(tmp_path, tiny_backbone, row, message):
    with pytest.raises(DataError, match=message):
        _setup(tiny_backbone.processor, llava_dataset(tmp_path, [row]))


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"id": 1}', r"the top level must be a list of records, got a dict"),
        ('[{"id": 1,}]', r"not valid JSON"),
        ("[]".encode("utf-16"), r"not UTF-8 text"),
        (json.dumps([llava_row(0)]).replace("Colour", "Coul\u00e9ur").encode("latin-1"), r"not UTF-8 text"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path, tiny_backbone, text, message):
    with pytest.raises(DataError, match=message):
        _setup(tiny_backbone.processor, llava_dataset(tmp_path, [], text=text))


def test_jsonl_errors_name_the_right_line(tmp_path, tiny_backbone):
    lines = [json.dumps(llava_row(0)), "", json.dumps(llava_row(1)), '{"id": "r2", oops}']
    with pytest.raises(DataError, match=r"train.jsonl:4: not valid JSON"):
        _setup(tiny_backbone.processor, llava_dataset(tmp_path, [], ".jsonl", text="\n".join(lines)))


def test_duplicate_ids_and_unknown_keys_are_reported_once(tmp_path, tiny_backbone, caplog):
    rows = [llava_row(0, answer_="x"), llava_row(0), llava_row(1)]
    rows[2]["answer"] = "red"  # a typo of "answers"
    with caplog.at_level(logging.WARNING):
        dm = _setup(tiny_backbone.processor, llava_dataset(tmp_path, rows))
    assert len(dm.split(dm.target, "train")) == 3  # nothing dropped
    warnings = [r.getMessage() for r in caplog.records]
    assert any("'answer' in 1 record" in w and "'answer_' in 1 record" in w and "known keys" in w for w in warnings)
    assert any("1 record ids occur more than once (2 records in all; e.g. 'r0')" in w for w in warnings)


@pytest.mark.parametrize("image", ["../outside.png", "/tmp/elsewhere.png", "sub/../../outside.png"])
def test_image_paths_leaving_the_data_root_are_refused_unless_allowed(tmp_path, tiny_backbone, image):
    Image.new("RGB", (24, 24)).save(tmp_path / "outside.png")
    source = llava_dataset(tmp_path, [llava_row(0, image=image)])
    with pytest.raises(DataError, match=r"leaves the data root .*data.allow_outside_root=true"):
        _setup(tiny_backbone.processor, source)
    if image == "../outside.png":
        _setup(tiny_backbone.processor, source, allow_outside_root=True)


# --- images ---------------------------------------------------------------------------------------------


def _image_set(tmp_path, name, **kwargs):
    return llava_dataset(tmp_path, [llava_row(0, image=name)], **kwargs)


def test_a_truncated_jpeg_is_caught_by_the_default_decode_check(tmp_path, tiny_backbone):
    (tmp_path / "images").mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "images" / "cut.jpg", quality=95)
    data = (tmp_path / "images" / "cut.jpg").read_bytes()
    (tmp_path / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])
    source = _image_set(tmp_path, "cut.jpg")
    _setup(tiny_backbone.processor, source, image_check="header", length_check=False)  # the header is intact
    with pytest.raises(DataError, match=r"record 'r0' .*cannot decode image .*cut.jpg: image file is truncated"):
        _setup(tiny_backbone.processor, source)


def test_transparency_is_composited_onto_white_and_counted(tmp_path, tiny_backbone, caplog):
    (tmp_path / "images").mkdir()
    rgba = Image.new("RGBA", (24, 24), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "images" / "alpha.png")
    with caplog.at_level(logging.WARNING):
        dm = _setup(tiny_backbone.processor, _image_set(tmp_path, "alpha.png"))
    image = dm.split(dm.target, "train").records[0].load_images()[0]
    assert image.getpixel((5, 5)) == (255, 255, 255) and image.getpixel((0, 0)) == (0, 0, 255)
    assert any("1 image had transparency, composited onto white" in r.getMessage() for r in caplog.records)


def test_16_bit_images_are_scaled_not_clipped(tmp_path, tiny_backbone, caplog):
    (tmp_path / "images").mkdir()
    values = np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "images" / "deep.png")
    with caplog.at_level(logging.WARNING):
        dm = _setup(tiny_backbone.processor, _image_set(tmp_path, "deep.png"))
    image = dm.split(dm.target, "train").records[0].load_images()[0]
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 1, 128, 255]
    assert any(
        "were 16-bit, scaled to 8 bits" in r.getMessage() or "was 16-bit" in r.getMessage() for r in caplog.records
    )


def test_animated_images_use_their_first_frame_and_are_counted(tmp_path, tiny_backbone, caplog):
    (tmp_path / "images").mkdir()
    frames = [Image.new("RGB", (24, 24), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "images" / "anim.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING):
        dm = _setup(tiny_backbone.processor, _image_set(tmp_path, "anim.gif"))
    assert dm.split(dm.target, "train").records[0].load_images()[0].getpixel((0, 0)) == (255, 0, 0)
    assert any("animated: their first frame is used" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("image_check", ["decode", "header"])
def test_decompression_bombs_and_oversized_images_are_refused(tmp_path, tiny_backbone, image_check):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    with pytest.raises(DataError, match=r"record 'r0' .*bomb.png is too large"):
        _setup(tiny_backbone.processor, _image_set(tmp_path, "bomb.png"), image_check=image_check)
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "big.png")
    with pytest.raises(DataError, match=r"big.png is 40x30 = 1,200 pixels, more than data.max_image_pixels=1,000"):
        _setup(tiny_backbone.processor, _image_set(tmp_path, "big.png"), image_check=image_check, max_image_pixels=1000)


def test_an_over_long_conversation_is_refused_at_start_up_not_in_a_worker(tmp_path, tiny_backbone):
    source = llava_dataset(tmp_path, [llava_row(0), llava_row(1, answer="red " * 300)])
    with pytest.raises(DataError, match=r"record 'r1' .*conversation is \d+ tokens .*than data.max_length=256"):
        _setup(tiny_backbone.processor, source, num_workers=2)


def test_start_up_token_counts_equal_the_collated_ones(tmp_path, compose):
    """The count that needs no image processing equals the real one, for every family, with one image
    and with several (see ConversationCollator.token_lengths)."""
    from mllmft import api
    from mllmft.data import ShapesSource
    from mllmft.data.record import Record, Turn

    sizes = [(64, 64), (97, 50), (40, 120)]
    for model in TINY_MODELS:
        backbone = api.build(compose(f"model={model}")).backbone
        records = [
            Record(r.id, (Image.new("RGB", s, "red"),), r.turns, r.task, r.answers)
            for r, s in zip(ShapesSource(sizes={"train": 3}).records("train"), sizes)
        ]
        if backbone.collator_class.max_images is None:
            images = tuple(Image.new("RGB", s, "red") for s in sizes[1:])
            records.append(Record("two", images, records[0].turns, "vqa", ("x",)))
        if backbone.family != "paligemma":  # single-turn only
            records.append(
                Record(
                    "mt",
                    (Image.new("RGB", sizes[1]),),
                    (
                        Turn("user", "Colour?"),
                        Turn("assistant", "red"),
                        Turn("user", "And the shape?"),
                        Turn("assistant", "a square"),
                    ),
                    "vqa",
                    ("x",),
                )
            )
        for generate in (False, True):
            collator = backbone.collator(4096, generate)
            collated = [
                int(collator([(0, r, r.load_images())])["model_inputs"]["attention_mask"].sum()) for r in records
            ]
            image_sizes = [tuple(image.size for image in r.images) for r in records]
            assert collator.token_lengths(records, image_sizes) == collated, (model, generate)


# --- start-up checks of the run -----------------------------------------------------------------------


@pytest.fixture
def checkpoint(compose, tmp_path):
    from mllmft import api

    parts = api.build(compose(CKPT, "trainer.max_steps=1", "scope=connector_llm", run_dir="first"))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    return tmp_path / "first" / "checkpoints" / "last.ckpt"


def _build(compose, *overrides):
    from mllmft import api

    return api.build(compose(*overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["++model.tiny.seed=1"],
            r"was trained from other base weights: tiny \(random\) \(weights \w+\); this run loads",
        ),
        (
            ["++model.tiny.text_layers=2"],
            r"is of another model: llava from tiny \(random\) \(architecture \w+\); this run "
            r"builds llava",
        ),
        (["strategy=spider"], r"was trained with strategy=full; this run resumes it with strategy=spider"),
        (["scope=llm"], r"was trained with scope .*this run's scope is"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused_before_anything_runs(compose, checkpoint, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _build(compose, f"ckpt_path={checkpoint}", "scope=connector_llm", *overrides)
    _build(compose, f"ckpt_path={checkpoint}", "scope=connector_llm")  # the same run resumes


def test_missing_garbage_and_truncated_checkpoints_are_one_line_errors(compose, checkpoint, tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "cut.ckpt").write_bytes(checkpoint.read_bytes()[:5000])
    (tmp_path / "plain.ckpt").write_bytes(b"")
    import torch

    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    for name, message in (
        ("nope.ckpt", "no such checkpoint file"),
        ("garbage.ckpt", "not a readable checkpoint"),
        ("cut.ckpt", "not a readable checkpoint"),
        ("plain.ckpt", "not a readable checkpoint"),
        ("foreign.ckpt", "records no mllmft run identity"),
    ):
        with pytest.raises(UserInputError, match=message) as info:
            _build(compose, f"ckpt_path={tmp_path / name}", "scope=connector_llm")
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["module.lr=-1"], r"module.lr=-1; expected a value > 0"),
        (["module.lr=0"], r"module.lr=0; expected a value > 0"),
        (["module.scheduler.warmup_ratio=2"], r"module.scheduler.warmup_ratio=2; expected a value in \[0, 1\]"),
        (["module.optimizer.betas=[0.9,1.5]"], r"module.optimizer.betas\[1\]=1.5"),
        (["data.batch_size=0"], r"data.batch_size=0; expected an integer >= 1"),
        (["data.image_check=full"], r"data.image_check='full'"),
        (["scope=llm", "scope.llm.train=false"], r"nothing to train"),
        (
            ["scope=llm_last_n", "scope.llm.last_n_layers=0"],
            r"scope.llm.last_n_layers=0; expected an integer in \[1, 4\]",
        ),
        (["scope=llm_last_n", "scope.llm.last_n_layers=9"], r"scope.llm.last_n_layers=9"),
        (["scope=llm", "scope.llm.lr_scale=-2"], r"scope.llm.lr_scale=-2"),
        (["strategy=spider", "strategy.eps=0"], r"strategy.eps=0"),
        (["strategy=gmt", "strategy.keep_ratio=1.5"], r"strategy.keep_ratio=1.5"),
        (["strategy=lora", "strategy.r=0"], r"strategy.r=0"),
        (
            ["+data.target.metric=vqa_accuracy", "+data.target.metric_args={mode: lenient}"],
            r"vqa_accuracy mode='lenient'",
        ),
        (["+data.target.metric_args={mode: official}"], r"metric 'exact_match' does not take metric_args"),
    ],
)
def test_settings_out_of_range_stop_the_run_before_anything_is_evaluated(compose, overrides, message):
    from hydra.errors import InstantiationException

    from mllmft.cli import user_error_message

    with pytest.raises((ConfigError, InstantiationException)) as info:
        _build(compose, *overrides)
    line = user_error_message(info.value)
    assert line is not None and "\n" not in line
    assert __import__("re").search(message, line), line


def test_hf_directories_that_cannot_load_are_one_line_errors(compose, tmp_path, tiny_backbone):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=r"empty: the directory has no config.json"):
        _build(compose, f"model.checkpoint={tmp_path / 'empty'}")
    tiny_backbone.model.save_pretrained(tmp_path / "cut")
    tiny_backbone.processor.save_pretrained(tmp_path / "cut")
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(ConfigError, match=r"cut: cannot load it \(\w+"):
        _build(compose, f"model.checkpoint={tmp_path / 'cut'}")


def test_hydra_and_worker_wrapped_errors_become_their_cause(compose):
    from hydra.utils import instantiate

    from mllmft.cli import one_line, user_error_message

    with pytest.raises(Exception) as info:
        instantiate({"strategy": {"_target_": "mllmft.strategies.SPIDER", "mask": "foo"}})
    assert user_error_message(info.value) == "strategy.mask='foo'; expected one of ('soft', 'binary')"
    with pytest.raises(Exception) as info:
        instantiate({"strategy": {"_target_": "mllmft.strategies.SPIDER", "maks": "soft"}})
    assert user_error_message(info.value) == "strategy: SPIDER.__init__() got an unexpected keyword argument 'maks'"
    worker = (
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        "  File \"x.py\", line 1, in <module>\nmllmft.errors.DataError: record 'r1' (f:3): bad image"
    )
    assert one_line(worker) == "record 'r1' (f:3): bad image"
    assert user_error_message(RuntimeError("a bug")) is None  # bugs keep their traceback


def test_results_without_upstream_sets_are_valid_json_with_null_and_a_reason(compose, tmp_path):
    from mllmft.run import run

    results = run(compose(*NO_UPSTREAM, "zeroshot_test=true"))
    text = (tmp_path / "run" / "results.json").read_text()

    def refuse(constant):
        raise AssertionError(f"{constant} in results.json")

    written = json.loads(text, parse_constant=refuse)
    assert written["tradeoff"]["final"]["S_u"] is None and results["tradeoff"]["final"]["H"] is None
    assert written["null_reasons"]["tradeoff.final.S_u"] == "no upstream set to measure it on"
    assert written["config"]["module"]["lr"] == 1e-3 and written["config"]["seed"] == 42  # every knob, resolved
    assert not list((tmp_path / "run").glob(".results.json*"))  # written atomically, no temporary left


def _with_test_split(tmp_path, rows, **kwargs):
    source = llava_dataset(tmp_path, rows)
    return LlavaJsonSource("custom", source.image_root, test=source.files["train"], **kwargs)


def test_a_set_is_scored_by_its_records_task(tmp_path):
    """Captions are scored as captions; a set mixing tasks is refused with one line unless its metric
    is set; a metric set in the config wins."""
    assert _with_test_split(tmp_path, [llava_row(i, task="caption") for i in range(3)]).metric == "caption"
    assert _with_test_split(tmp_path, [llava_row(i) for i in range(3)]).metric == "exact_match"
    assert _with_test_split(tmp_path, [llava_row(0)], task="multiple_choice").metric == "multiple_choice"
    mixed = [llava_row(0, task="caption"), llava_row(1, task="vqa")]
    with pytest.raises(DataError, match=r"mix the tasks \['caption', 'vqa'\]"):
        _ = _with_test_split(tmp_path, mixed).metric
    assert _with_test_split(tmp_path, mixed, metric="vqa_accuracy").metric == "vqa_accuracy"


def test_messages_and_images_records_read_as_conversations(tmp_path):
    """ms-swift's / TRL's format gives the same record as LLaVA's; no image, a placeholder count that
    is not the image count, or a system message are refused with one line naming the record."""
    llava = llava_dataset(tmp_path, [llava_row(0)]).records("train")[0]
    swift = {
        "id": "r0",
        "images": ["img.png"],
        "messages": [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}],
    }
    trl = {
        "id": "r0",
        "images": ["img.png"],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ],
    }
    for row in (swift, trl):
        record = llava_dataset(tmp_path, [row]).records("train")[0]
        assert (record.turns, record.answers, record.images) == (llava.turns, llava.answers, llava.images)
    for change, message in (
        ({"images": ["img.png", "img.png", "img.png"]}, "1 <image> placeholder for 3 images"),
        ({"images": []}, "no images"),
        ({"messages": [{"role": "system", "content": "Be brief."}, *swift["messages"]]}, "system message"),
    ):
        with pytest.raises(DataError, match=message) as err:
            llava_dataset(tmp_path, [{**swift, **change}]).records("train")
        assert "'r0'" in str(err.value)
