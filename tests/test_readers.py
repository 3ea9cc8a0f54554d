"""Every data set reader, on a few records written in the set's published layout (generated images),
read end to end through its real config: records, validation, images, collation."""

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from PIL import Image

from mllmft.data import ConversationCollator, MLLMDataModule
from mllmft.errors import DataError

QUESTIONS = ["What colour is the car?", "How many dogs are there?", "What is written on the sign?"]


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), "green").save(path)


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _karpathy(root, name, filepath=""):
    images = []
    for i, split in enumerate(["train", "restval", "val", "test", "test"]):
        _image(root / filepath / f"{i}.jpg")
        images.append({"filepath": filepath, "filename": f"{i}.jpg", "split": split, "imgid": i,
                       "sentences": [{"raw": f"a green square number {i}."}, {"raw": "a plain green image"}]})
    _json(root / name, {"images": images})


def _vqa(root, coco, q_name, a_name, split_dir):
    questions, annotations = [], []
    for i, q in enumerate(QUESTIONS):
        _image(coco / split_dir / f"COCO_{split_dir}_{i:012d}.jpg")
        questions.append({"image_id": i, "question": q, "question_id": 100 + i})
        annotations.append({"question_id": 100 + i, "multiple_choice_answer": "red",
                            "answers": [{"answer": a} for a in ["red"] * 7 + ["dark red"] * 3]})
    _json(root / q_name, {"questions": questions})
    _json(root / a_name, {"annotations": annotations})


def build(data_dir: Path, name: str) -> None:
    d = data_dir / {"coco_caption": "coco"}.get(name, name)
    if name == "flickr30k":
        _karpathy(d, "dataset_flickr30k.json")
        for i in range(5):
            _image(d / "flickr30k-images" / f"{i}.jpg")
    elif name == "coco_caption":
        _karpathy(d, "dataset_coco.json", filepath="val2014")
    elif name in ("okvqa", "vqav2"):
        prefix = "v2_" if name == "vqav2" else ""
        _vqa(d, data_dir / "coco", f"{prefix}OpenEnded_mscoco_val2014_questions.json",
             f"{prefix}mscoco_val2014_annotations.json", "val2014")
        _vqa(d, data_dir / "coco", f"{prefix}OpenEnded_mscoco_train2014_questions.json",
             f"{prefix}mscoco_train2014_annotations.json", "train2014")
    elif name == "textvqa":
        for split in ("train", "val"):
            _json(d / f"TextVQA_0.5.1_{split}.json", {"data": [
                {"question_id": i, "image_id": f"img{i}", "question": q, "answers": ["stop"] * 10,
                 "ocr_tokens": ["STOP", "main", "st"]} for i, q in enumerate(QUESTIONS)]})
        for i in range(3):
            _image(d / "train_images" / f"img{i}.jpg")
    elif name == "gqa":
        for file in ("train_balanced_questions.json", "testdev_balanced_questions.json"):
            _json(d / file, {f"q{i}": {"imageId": f"n{i}", "question": q, "answer": "yes"}
                             for i, q in enumerate(QUESTIONS)})
        for i in range(3):
            _image(d / "images" / f"n{i}.jpg")
    elif name == "ocrvqa":
        _json(d / "dataset.json", {f"b{i}": {"imageURL": f"http://x/{i}.jpg", "questions": ["Who wrote this book?"],
                                             "answers": ["Jane Doe"], "title": "T", "genre": "G", "split": s}
                                   for i, s in enumerate([1, 2, 3, 3])})
        for i in range(4):
            _image(d / "images" / f"b{i}.jpg")
    elif name == "aokvqa":
        for split in ("train", "val"):
            _json(d / f"aokvqa_v1p0_{split}.json", [
                {"question_id": f"a{i}", "image_id": i, "question": q, "choices": ["red", "blue", "two", "none"],
                 "correct_choice_idx": 1, "direct_answers": ["blue"] * 10} for i, q in enumerate(QUESTIONS)])
        for i in range(3):
            _image(data_dir / "coco" / "val2017" / f"{i:012d}.jpg")
    elif name == "vizwiz":
        for split in ("train", "val"):
            answers = [{"answer": "unanswerable"}] * 10
            rows = [{"image": f"VizWiz_{split}_{i:08d}.jpg", "question": q, "answers": answers}
                    for i, q in enumerate(QUESTIONS)]
            _json(d / f"{split}.json", rows)
            for i in range(3):
                _image(d / "val" / f"VizWiz_{split}_{i:08d}.jpg")
    elif name == "scienceqa":
        problems = {}
        for split in ("train", "val", "test"):
            rows = []
            for i in range(3):
                pid = f"{split}{i}"
                problems[pid] = {"answer": 1}
                row = {"id": pid, "conversations": [
                    {"from": "human", "value": "Context: none\nQuestion: Which is a mammal?\nOptions: (A) frog "
                                               "(B) dog\n<image>"},
                    {"from": "gpt", "value": "The answer is B."}]}
                if i < 2:  # the third is text-only: not in the IMG subset
                    row["image"] = f"{split}/{pid}/image.png"
                    _image(d / "images" / split / pid / "image.png")
                rows.append(row)
            _json(d / f"llava_{split}_CQM-A.json", rows)
        _json(d / "problems.json", problems)
    elif name == "iconqa":
        for split in ("train", "val", "test"):
            for i in range(2):
                folder = d / "iconqa_data" / "iconqa" / split / "choose_txt" / f"{split}{i}"
                _json(folder / "data.json", {"question": "Which shape is it?", "choices": ["circle", "square"],
                                             "answer": 1, "ques_type": "choose_txt"})
                _image(folder / "image.png")
    else:
        raise KeyError(name)


SOURCES = ["flickr30k", "coco_caption", "okvqa", "vqav2", "textvqa", "gqa", "ocrvqa", "aokvqa", "vizwiz",
           "scienceqa", "iconqa"]
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
    build(data_dir, name)
    cfg = compose(f"+source={name}", f"paths.data_dir={data_dir}")
    source = instantiate(cfg.source)
    references, metric = EXPECTED[name]
    assert source.metric == metric
    test = source.records("test")
    assert test and test[0].answers == references
    for record in test:
        record.validate()
        record.check_file("header")
        record.decode_image()
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
    build(tmp_path / "data", "textvqa")
    source = instantiate(compose("+source=textvqa", f"paths.data_dir={tmp_path / 'data'}").source)
    assert "Reference OCR token: STOP, main, st" in source.records("test")[0].turns[0].text


def test_scienceqa_keeps_the_image_subset_and_asks_for_a_letter(compose, tmp_path):
    build(tmp_path / "data", "scienceqa")
    records = instantiate(compose("+source=scienceqa", f"paths.data_dir={tmp_path / 'data'}").source).records("test")
    assert len(records) == 2 and records[0].turns[0].text.endswith("from the given choices directly.")


def test_missing_annotation_file_names_the_set(compose, tmp_path):
    build(tmp_path / "data", "okvqa")
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
    build(tmp_path / "data", "gqa")
    source = instantiate(compose("+source=gqa", f"paths.data_dir={tmp_path / 'data'}").source)
    dm = MLLMDataModule(tiny_backbone.processor, source, batch_size=2)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    collate = ConversationCollator(tiny_backbone.processor, 256)
    assert collate([(0, r, r.load_image()) for r in source.records("train")[:1]])["labels"] is not None


def test_hugging_face_dataset_with_a_column_mapping(tmp_path, tiny_backbone):
    datasets = pytest.importorskip("datasets")
    from mllmft.data import HFDataset

    rows = {"picture": [Image.new("RGB", (20, 20), c) for c in ("red", "blue", "green")],
            "q": ["What colour?"] * 3, "a": ["red", "blue", "green"], "all": [["red", "dark red"], ["blue"], ["green"]]}
    features = datasets.Features({"picture": datasets.Image(), "q": datasets.Value("string"),
                                  "a": datasets.Value("string"), "all": datasets.Sequence(datasets.Value("string"))})
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "hf"))
    source = HFDataset("colours", str(tmp_path / "hf"), splits={"train": "train", "test": "test"},
                       columns={"image": "picture", "question": "q", "answer": "a", "answers": "all"},
                       metric="vqa_accuracy")
    test = source.records("test")
    assert [r.answers for r in test] == [("red", "dark red"), ("blue",), ("green",)]
    assert test[1].load_image().getpixel((0, 0)) == (0, 0, 255)  # decoded lazily, per sample
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
        build(data_dir, name)
    results = run(compose("data=flickr30k", f"paths.data_dir={data_dir}", "data.num_workers=0",
                          "data.image_check=header", "zeroshot_test=true"))
    assert results["metrics"] == {"flickr30k": {"name": "caption"}, "okvqa": {"name": "vqa_accuracy"},
                                  "textvqa": {"name": "vqa_accuracy"}, "gqa": {"name": "exact_match"},
                                  "ocrvqa": {"name": "exact_match"}}
    details = results["details"]["final"]["flickr30k"]
    assert {"CIDEr", "BLEU-4", "ROUGE-L", "ptb_tokenizer"} <= set(details)
    assert results["samples"]["flickr30k"] == 2 and results["samples"]["ocrvqa"] == 2
    assert set(results["tradeoff"]["final"]) == {"S_t", "S_u", "H", "E", "F", "O"}
