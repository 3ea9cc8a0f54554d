"""Data written to disk in the layouts the readers read: LLaVA JSON sets, each paper's published
layout, the general benchmarks' files (all with generated images)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

from mllmft.data import LlavaJsonSource


def llava_row(i, image="img.png", answer="red", **extra):
    return {
        "id": f"r{i}",
        "image": image,
        "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": answer}],
        **extra,
    }


def llava_dataset(tmp_path, rows, suffix=".json", text=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    if not (tmp_path / "images" / "img.png").exists():
        Image.new("RGB", (24, 24), "red").save(tmp_path / "images" / "img.png")
    path = tmp_path / f"train{suffix}"
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return LlavaJsonSource("custom", str(tmp_path / "images"), train=str(path))


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
        images.append(
            {
                "filepath": filepath,
                "filename": f"{i}.jpg",
                "split": split,
                "imgid": i,
                "sentences": [{"raw": f"a green square number {i}."}, {"raw": "a plain green image"}],
            }
        )
    _json(root / name, {"images": images})


def _vqa(root, coco, q_name, a_name, split_dir):
    questions, annotations = [], []
    for i, q in enumerate(QUESTIONS):
        _image(coco / split_dir / f"COCO_{split_dir}_{i:012d}.jpg")
        questions.append({"image_id": i, "question": q, "question_id": 100 + i})
        annotations.append(
            {
                "question_id": 100 + i,
                "multiple_choice_answer": "red",
                "answers": [{"answer": a} for a in ["red"] * 7 + ["dark red"] * 3],
            }
        )
    _json(root / q_name, {"questions": questions})
    _json(root / a_name, {"annotations": annotations})


def write_reader_layout(data_dir: Path, name: str) -> None:
    d = data_dir / {"coco_caption": "coco"}.get(name, name)
    if name == "flickr30k":
        _karpathy(d, "dataset_flickr30k.json")
        for i in range(5):
            _image(d / "flickr30k-images" / f"{i}.jpg")
    elif name == "coco_caption":
        _karpathy(d, "dataset_coco.json", filepath="val2014")
    elif name in ("okvqa", "vqav2"):
        prefix = "v2_" if name == "vqav2" else ""
        _vqa(
            d,
            data_dir / "coco",
            f"{prefix}OpenEnded_mscoco_val2014_questions.json",
            f"{prefix}mscoco_val2014_annotations.json",
            "val2014",
        )
        _vqa(
            d,
            data_dir / "coco",
            f"{prefix}OpenEnded_mscoco_train2014_questions.json",
            f"{prefix}mscoco_train2014_annotations.json",
            "train2014",
        )
    elif name == "textvqa":
        for split in ("train", "val"):
            _json(
                d / f"TextVQA_0.5.1_{split}.json",
                {
                    "data": [
                        {
                            "question_id": i,
                            "image_id": f"img{i}",
                            "question": q,
                            "answers": ["stop"] * 10,
                            "ocr_tokens": ["STOP", "main", "st"],
                        }
                        for i, q in enumerate(QUESTIONS)
                    ]
                },
            )
        for i in range(3):
            _image(d / "train_images" / f"img{i}.jpg")
    elif name == "gqa":
        for file in ("train_balanced_questions.json", "testdev_balanced_questions.json"):
            _json(
                d / file,
                {f"q{i}": {"imageId": f"n{i}", "question": q, "answer": "yes"} for i, q in enumerate(QUESTIONS)},
            )
        for i in range(3):
            _image(d / "images" / f"n{i}.jpg")
    elif name == "ocrvqa":
        _json(
            d / "dataset.json",
            {
                f"b{i}": {
                    "imageURL": f"http://x/{i}.jpg",
                    "questions": ["Who wrote this book?"],
                    "answers": ["Jane Doe"],
                    "title": "T",
                    "genre": "G",
                    "split": s,
                }
                for i, s in enumerate([1, 2, 3, 3])
            },
        )
        for i in range(4):
            _image(d / "images" / f"b{i}.jpg")
    elif name == "aokvqa":
        for split in ("train", "val"):
            _json(
                d / f"aokvqa_v1p0_{split}.json",
                [
                    {
                        "question_id": f"a{i}",
                        "image_id": i,
                        "question": q,
                        "choices": ["red", "blue", "two", "none"],
                        "correct_choice_idx": 1,
                        "direct_answers": ["blue"] * 10,
                    }
                    for i, q in enumerate(QUESTIONS)
                ],
            )
        for i in range(3):
            _image(data_dir / "coco" / "val2017" / f"{i:012d}.jpg")
    elif name == "vizwiz":
        for split in ("train", "val"):
            answers = [{"answer": "unanswerable"}] * 10
            rows = [
                {"image": f"VizWiz_{split}_{i:08d}.jpg", "question": q, "answers": answers}
                for i, q in enumerate(QUESTIONS)
            ]
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
                row = {
                    "id": pid,
                    "conversations": [
                        {
                            "from": "human",
                            "value": "Context: none\nQuestion: Which is a mammal?\nOptions: (A) frog (B) dog\n<image>",
                        },
                        {"from": "gpt", "value": "The answer is B."},
                    ],
                }
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
                _json(
                    folder / "data.json",
                    {
                        "question": "Which shape is it?",
                        "choices": ["circle", "square"],
                        "answer": 1,
                        "ques_type": "choose_txt",
                    },
                )
                _image(folder / "image.png")
    else:
        raise KeyError(name)


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _tsv(rows: list[dict]) -> str:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    return "\n".join(["\t".join(header)] + ["\t".join(str(r[h]) for h in header) for r in rows]) + "\n"


def write_general_benchmarks(root):
    """Each benchmark in its published layout under ``root`` (the data_dir of conf/source/*.yaml)."""
    (root / "coco" / "val2014").mkdir(parents=True)
    for i, color in enumerate(("red", "blue")):
        (root / "coco" / "val2014" / f"COCO_val2014_{i:012d}.jpg").write_bytes(_png(color))
    (root / "pope").mkdir()
    pope = [
        {"question_id": i + 1, "image": f"COCO_val2014_{i % 2:012d}.jpg", "text": "Is there a cat?", "label": label}
        for i, label in enumerate(["yes", "yes", "no", "no", "yes", "no"])
    ]
    (root / "pope" / "coco_pope_adversarial.json").write_text("\n".join(json.dumps(p) for p in pope) + "\n")
    mme = root / "MME_Benchmark_release_version"
    for subtask, stem in (("existence", "a"), ("existence", "b"), ("code_reasoning", "c")):
        (mme / subtask).mkdir(parents=True, exist_ok=True)
        (mme / subtask / f"{stem}.png").write_bytes(_png("green"))
        (mme / subtask / f"{stem}.txt").write_text(
            "Is it? Please answer yes or no.\tYes\nIs it not? Please answer yes or no.\tNo\n"
        )
    (mme / "artwork" / "images").mkdir(parents=True)
    (mme / "artwork" / "questions_answers_YN").mkdir()
    (mme / "artwork" / "images" / "d.jpg").write_bytes(_png("white"))
    (mme / "artwork" / "questions_answers_YN" / "d.txt").write_text("Is it art?\tYes\nIs it a car?\tNo\n")
    image = base64.b64encode(_png("black")).decode()
    rows = [
        {
            "index": 10,
            "question": "Which?",
            "hint": "nan",
            "A": "cat",
            "B": "dog",
            "C": "bird",
            "D": "fish",
            "answer": "B",
            "category": "attribute",
            "image": image,
        },
        {
            "index": 11,
            "question": "Is it?",
            "hint": "Look.",
            "A": "yes",
            "B": "no",
            "C": "nan",
            "D": "nan",
            "answer": "A",
            "category": "logic",
            "image": "10",
        },
    ]  # the image of question 10
    (root / "mmbench").mkdir()
    (root / "mmbench" / "MMBench_DEV_EN.tsv").write_text(_tsv(rows))
    (root / "mmbench" / "MMBench_DEV_CN.tsv").write_text(_tsv(rows))
    (root / "seed_bench" / "SEED-Bench-image").mkdir(parents=True)
    for name in ("s1.jpg", "s2.jpg", "s3.jpg"):
        (root / "seed_bench" / "SEED-Bench-image" / name).write_bytes(_png("gray"))
    questions = [
        {
            "question_id": f"q{i}",
            "question": "What?",
            "choice_a": "a",
            "choice_b": "b",
            "choice_c": "c",
            "choice_d": "d",
            "answer": answer,
            "data_id": data_id,
            "data_type": kind,
            "question_type_id": t,
        }
        for i, (answer, data_id, kind, t) in enumerate(
            [
                ("A", "s1.jpg", "image", 1),
                ("C", "s2.jpg", "image", 2),
                ("B", "s3.jpg", "image", 1),
                ("D", "v.mp4", "video", 1),
            ]
        )
    ]
    (root / "seed_bench" / "SEED-Bench.json").write_text(
        json.dumps({"questions": questions, "question_type": {"Scene Understanding": 1, "Instance Identity": 2}})
    )
    return root
