"""Every data set reader, on a few records written in the set's published layout (generated images),
read end to end through its real config: records, validation, images, collation."""

import pytest
from hydra.utils import instantiate
from PIL import Image

from mllmft.data import ConversationCollator, MLLMDataModule
from mllmft.errors import DataError
from tests.helpers.data_files import write_reader_layout

SOURCES = [
    "flickr30k",
    "coco_caption",
    "okvqa",
    "vqav2",
    "textvqa",
    "gqa",
    "ocrvqa",
    "aokvqa",
    "vizwiz",
    "scienceqa",
    "iconqa",
]
EXPECTED = {  # (first test record's reference(s), metric)
    "flickr30k": (("a green square number 3.", "a plain green image"), "caption"),
    "coco_caption": (("a green square number 3.", "a plain green image"), "caption"),
    "okvqa": (tuple(["red"] * 7 + ["dark red"] * 3), "vqa_accuracy"),
    "vqav2": (tuple(["red"] * 7 + ["dark red"] * 3), "vqa_accuracy"),
    "textvqa": (("stop",) * 10, "vqa_accuracy"),
    "gqa": (("yes",), "exact_match"),
    "ocrvqa": (("Jane Doe",), "exact_match"),
    "aokvqa": (("B",), "multiple_choice"),
    "vizwiz": (("unanswerable",) * 10, "vqa_accuracy"),
    "scienceqa": (("B",), "multiple_choice"),
    "iconqa": (("square",), "exact_match"),
}


@pytest.mark.parametrize("name", SOURCES)
def test_reader_reads_its_published_layout_end_to_end(compose, tmp_path, tiny_backbone, name):
    data_dir = tmp_path / "data"
    write_reader_layout(data_dir, name)
    cfg = compose(f"+source={name}", f"paths.data_dir={data_dir}")
    source = instantiate(cfg.source)
    references, metric = EXPECTED[name]
    assert source.metric == metric
    test = source.records("test")
    assert test and test[0].answers == references
    for record in test:
        record.validate()
        record.check_files("header")
        record.decode_images()
    train = source.records("train")
    assert train and all(r.turns[-1].text for r in train)
    dm = MLLMDataModule(tiny_backbone.processor, source, batch_size=2, eval_batch_size=2, max_length=256)
    dm.setup("fit")
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["model_inputs"]["pixel_values"].shape[0] == len(batch["ids"])
    train_batch = next(iter(dm.train_dataloader()))
    assert (train_batch["labels"] != -100).any()


def test_textvqa_puts_ocr_tokens_in_the_prompt(compose, tmp_path):
    write_reader_layout(tmp_path / "data", "textvqa")
    source = instantiate(compose("+source=textvqa", f"paths.data_dir={tmp_path / 'data'}").source)
    assert "Reference OCR token: STOP, main, st" in source.records("test")[0].turns[0].text


def test_scienceqa_keeps_the_image_subset_and_asks_for_a_letter(compose, tmp_path):
    write_reader_layout(tmp_path / "data", "scienceqa")
    records = instantiate(compose("+source=scienceqa", f"paths.data_dir={tmp_path / 'data'}").source).records("test")
    assert len(records) == 2 and records[0].turns[0].text.endswith("from the given choices directly.")


def test_missing_annotation_file_names_the_set(compose, tmp_path):
    write_reader_layout(tmp_path / "data", "okvqa")
    (tmp_path / "data" / "okvqa" / "OpenEnded_mscoco_val2014_questions.json").unlink()
    source = instantiate(compose("+source=okvqa", f"paths.data_dir={tmp_path / 'data'}").source)
    with pytest.raises(DataError, match="data set 'okvqa': test file not found: .*questions.json"):
        source.records("test")


@pytest.mark.parametrize("name", ["flickr30k", "scienceqa", "okvqa"])
def test_real_data_configs_compose_with_spider_upstream(compose, name):
    cfg = compose(f"data={name}")
    assert set(cfg.data.upstream) == {"okvqa", "textvqa", "gqa", "ocrvqa"} - {name}
    assert cfg.data.target.name == name


def test_target_without_validation_split_skips_validation(compose, tmp_path, tiny_backbone):
    write_reader_layout(tmp_path / "data", "gqa")
    source = instantiate(compose("+source=gqa", f"paths.data_dir={tmp_path / 'data'}").source)
    dm = MLLMDataModule(tiny_backbone.processor, source, batch_size=2)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    collate = ConversationCollator(tiny_backbone.processor, 256)
    assert collate([(0, r, r.load_images()) for r in source.records("train")[:1]])["labels"] is not None


def test_hugging_face_dataset_with_a_column_mapping(tmp_path, tiny_backbone):
    datasets = pytest.importorskip("datasets")
    from mllmft.data import HFDataset

    rows = {
        "picture": [Image.new("RGB", (20, 20), c) for c in ("red", "blue", "green")],
        "q": ["What colour?"] * 3,
        "a": ["red", "blue", "green"],
        "all": [["red", "dark red"], ["blue"], ["green"]],
    }
    features = datasets.Features(
        {
            "picture": datasets.Image(),
            "q": datasets.Value("string"),
            "a": datasets.Value("string"),
            "all": datasets.Sequence(datasets.Value("string")),
        }
    )
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "hf"))
    source = HFDataset(
        "colours",
        str(tmp_path / "hf"),
        splits={"train": "train", "test": "test"},
        columns={"image": "picture", "question": "q", "answer": "a", "answers": "all"},
        metric="vqa_accuracy",
    )
    test = source.records("test")
    assert [r.answers for r in test] == [("red", "dark red"), ("blue",), ("green",)]
    assert test[1].load_images()[0].getpixel((0, 0)) == (0, 0, 255)  # decoded lazily, per sample
    dm = MLLMDataModule(tiny_backbone.processor, source, batch_size=2, eval_batch_size=3)
    dm.setup("fit")
    assert dm.val_dataloader() == [] and len(next(iter(dm.train_dataloader()))["ids"]) == 2
    bad = HFDataset("colours", str(tmp_path / "hf"), columns={"question": "question"})
    with pytest.raises(DataError, match=r"columns \['image', 'question', 'answer'\] not in"):
        bad.records("test")


def test_upstream_list_is_edited_from_the_command_line(compose):
    cfg = compose("data=flickr30k", "~data.upstream.ocrvqa", "+source@data.upstream.vqav2=vqav2")
    assert sorted(cfg.data.upstream) == ["gqa", "okvqa", "textvqa", "vqav2"]


def test_caption_target_with_spider_upstream_runs_end_to_end(compose, tmp_path):
    from mllmft.run import run

    data_dir = tmp_path / "data"
    for name in ("flickr30k", "okvqa", "textvqa", "gqa", "ocrvqa"):
        write_reader_layout(data_dir, name)
    results = run(
        compose(
            "data=flickr30k",
            f"paths.data_dir={data_dir}",
            "data.num_workers=0",
            "data.image_check=header",
            "zeroshot_test=true",
        )
    )
    assert results["metrics"] == {
        "flickr30k": {"name": "caption"},
        "okvqa": {"name": "vqa_accuracy"},
        "textvqa": {"name": "vqa_accuracy"},
        "gqa": {"name": "exact_match"},
        "ocrvqa": {"name": "exact_match"},
    }
    details = results["details"]["final"]["flickr30k"]
    assert {"CIDEr", "BLEU-4", "ROUGE-L", "ptb_tokenizer"} <= set(details)
    assert results["samples"]["flickr30k"] == 2 and results["samples"]["ocrvqa"] == 2
    assert set(results["tradeoff"]["final"]) == {"S_t", "S_u", "H", "E", "F", "O"}
