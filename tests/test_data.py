import json

import pytest
from PIL import Image

from mllmft import api
from mllmft.data import DataError, DigitsSource, MLLMDataModule, Record, ShapesSource, Turn, read_llava_json
from mllmft.data.record import single_turn


def test_shapes_is_deterministic_and_splits_differ():
    a, b = ShapesSource(sizes={"train": 8}).records("train"), ShapesSource(sizes={"train": 8}).records("train")
    assert [r.answers for r in a] == [r.answers for r in b]
    assert list(a[0].images[0].getdata()) == list(b[0].images[0].getdata())
    test = ShapesSource(sizes={"test": 8}).records("test")
    assert [list(r.images[0].getdata()) for r in test] != [list(r.images[0].getdata()) for r in a]
    assert {r.task for r in a} == {"caption", "vqa"}
    caption = a[0]
    n, colour, shape = caption.answers[0].split()
    assert colour in ShapesSource.COLOURS and shape.rstrip("s") in ShapesSource.SHAPES


def test_digits_fixed_split_covers_every_image_once():
    src = DigitsSource()
    ids = {split: {r.id.rsplit("-", 1)[0] for r in src.records(split)} for split in ("train", "val", "test")}
    assert sum(len(v) for v in ids.values()) == 1797
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    vqa = next(r for r in src.records("test") if r.task == "vqa")
    assert vqa.answers[0] in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _write_llava(tmp_path, rows, suffix=".json"):
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def llava_row(i, image="img.png", answer="a cat"):
    return {
        "id": f"r{i}",
        "image": image,
        "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": answer}],
    }


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_llava_json_reader(tmp_path, suffix):
    Image.new("RGB", (20, 20), "red").save(tmp_path / "img.png")
    rows = [llava_row(0), {**llava_row(1), "answers": ["cat", "a cat"], "task": "vqa"}]
    records = read_llava_json(_write_llava(tmp_path, rows, suffix), tmp_path)
    assert records[0].turns == (Turn("user", "What is this?"), Turn("assistant", "a cat"))
    assert records[0].answers == ("a cat",) and records[1].answers == ("cat", "a cat")
    assert records[0].load_images()[0].size == (20, 20)


def test_llava_json_rejects_unknown_speaker_and_missing_answer(tmp_path):
    bad = llava_row(0)
    bad["conversations"][1]["from"] = "robot"
    with pytest.raises(DataError, match=r"record 'r0'.*unknown speaker 'robot'"):
        read_llava_json(_write_llava(tmp_path, [bad]), tmp_path)
    no_answer = llava_row(1)
    no_answer["conversations"] = no_answer["conversations"][:1]
    with pytest.raises(DataError, match=r"record 'r1'.*end with the assistant"):
        read_llava_json(_write_llava(tmp_path, [no_answer]), tmp_path)


def test_record_validation_names_the_problem():
    image = Image.new("RGB", (8, 8))
    with pytest.raises(DataError, match="record 'x'.*empty"):
        Record("x", (image,), (), "vqa", ("a",)).validate()
    with pytest.raises(DataError, match="record 'y'.*no reference answer"):
        Record("y", (image,), (Turn("user", "q"), Turn("assistant", "a")), "vqa", ()).validate()
    with pytest.raises(DataError, match="record 'w'.*no image"):
        Record("w", (), (Turn("user", "q"), Turn("assistant", "a")), "vqa", ("a",)).validate()
    with pytest.raises(
        DataError, match=r"record 'v' \(built-in\), image 2 of 2: the image must be a file path, got int"
    ):
        Record("v", (image, 3), (Turn("user", "q"), Turn("assistant", "a")), "vqa", ("a",)).validate()
    with pytest.raises(DataError, match="record 'z'.*turn 1 \\(assistant\\) is empty"):
        single_turn("z", image, "q", " ", "vqa", answers=("a",)).validate()
    with pytest.raises(DataError, match="unknown task"):
        single_turn("t", image, "q", "a", "story").validate()


class _Files:
    """A source of on-disk records, to test start-up checks."""

    name = "files"

    def __init__(self, records):
        self._records = records

    def records(self, split):
        return self._records


def test_missing_and_corrupt_images_fail_at_setup(tmp_path, tiny_backbone):
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    missing = single_turn("m1", tmp_path / "nope.png", "q", "a", "vqa", origin="train.json[3]")
    corrupt = single_turn("c1", tmp_path / "corrupt.jpg", "q", "a", "vqa")
    for record, message in (
        (missing, r"record 'm1' \(train.json\[3\]\): image file not found: .*nope.png"),
        (corrupt, r"record 'c1'.*cannot read image .*corrupt.jpg"),
    ):
        dm = MLLMDataModule(tiny_backbone.processor, _Files([record]))
        with pytest.raises(DataError, match=message):
            dm.setup("fit")
    # with the start-up checks off, the loader still names the record when it meets the bad file
    dm = MLLMDataModule(tiny_backbone.processor, _Files([corrupt]), image_check="exists", length_check=False)
    dm.setup("fit")
    with pytest.raises(DataError, match="record 'c1'"):
        next(iter(dm.train_dataloader()))


def test_test_sets_are_target_then_upstream(tiny_backbone):
    dm = MLLMDataModule(
        tiny_backbone.processor,
        DigitsSource(sizes={"test": 6}),
        {"shapes": ShapesSource(sizes={"test": 5})},
        eval_batch_size=4,
    )
    dm.setup("test")
    assert dm.test_set_names == ["digits", "shapes"]
    loaders = dm.test_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [6, 5]


def test_the_readmes_upstream_overrides_add_sets(compose, tmp_path):
    """README "Bring your own data": a built-in set and a LLaVA JSON set added as upstream sets."""
    from tests.helpers.data_files import llava_dataset, llava_row

    own = llava_dataset(tmp_path, [llava_row(i, task="caption") for i in range(2)])
    cfg = compose(
        "~data.upstream.shapes",
        "+data.upstream.shapes2={_target_: mllmft.data.ShapesSource, name: shapes2}",
        f"+data.upstream.mine={{_target_: mllmft.data.LlavaJsonSource, name: mine, "
        f"image_root: {own.image_root}, test: {own.files['train']}}}",
    )
    parts = api.build(cfg)
    assert parts.datamodule.test_set_names == ["digits", "positions", "counting", "shapes2", "mine"]
    assert parts.datamodule.test_sets[4].metric["name"] == "caption"  # by its records' task
