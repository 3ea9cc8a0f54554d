"""Fuzz: hundreds of random malformed records, files and images. Each either loads whole and trains
(every record kept, its references intact, a finite loss on every batch) or stops at start-up with
one line naming the file or record; never a traceback, never a record silently lost or changed."""

import io
import json
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mllmft.data import LlavaJsonSource, MLLMDataModule
from mllmft.errors import UserInputError

CASES = 240
ODD_VALUES = [
    None,
    0,
    -1,
    3.5,
    True,
    "",
    " ",
    "x" * 5000,
    [],
    {},
    [None],
    [1],
    ["a", 2],
    {"a": 1},
    "\u0000",
    "caf\u00e9 \U0001f600",
    "<image>",
    float("1e308"),
    10**30,
    ["x"] * 50,
]
IMAGE_NAMES = [
    "ok.png",
    "missing.png",
    "../outside.png",
    "/etc/passwd",
    "",
    "sub",
    "garbage.png",
    "cut.jpg",
    "empty.png",
    "alpha.png",
    "deep.png",
    "anim.gif",
    "cmyk.jpg",
    "tiny.png",
    "bomb.png",
    "mono.png",
]


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_images")
    rng = np.random.default_rng(0)
    Image.new("RGB", (32, 32), "red").save(root / "ok.png")
    (root / "garbage.png").write_bytes(rng.bytes(300))
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (root / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    Image.new("RGBA", (16, 16), (0, 255, 0, 10)).save(root / "alpha.png")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(root / "deep.png")
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(root / "cmyk.jpg")
    Image.new("RGB", (1, 1)).save(root / "tiny.png")
    (root / "bomb.png").write_bytes(_png_header(60_000, 60_000))
    Image.new("1", (16, 16), 1).save(root / "mono.png")
    (root / "sub").mkdir()
    return root


def _valid_row(i: int) -> dict:
    return {
        "id": f"r{i}",
        "image": "ok.png",
        "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}],
    }


def _mutate_row(rng: random.Random, row: dict) -> dict:
    row = json.loads(json.dumps(row))
    kind = rng.choice(["drop", "value", "image", "turns", "answers", "task", "options", "extra"])
    if kind == "drop":
        row.pop(rng.choice(list(row)), None)
    elif kind == "value":
        row[rng.choice(["id", "image", "conversations", "answers", "task"])] = rng.choice(ODD_VALUES)
    elif kind == "image":
        row["image"] = rng.choice(IMAGE_NAMES)
    elif kind in ("turns", "options") and not _turn_list(row.get("conversations")):
        row["conversations"] = rng.choice(ODD_VALUES)  # already broken: break it another way
    elif kind == "turns":
        turns = row["conversations"]
        change = rng.choice(["role", "value", "missing", "extend", "empty", "long", "drop"])
        turn = rng.choice(turns)
        if change == "role":
            turn["from"] = rng.choice(["gpt", "human", "system", "robot", None, 3])
        elif change == "value":
            turn["value"] = rng.choice(ODD_VALUES)
        elif change == "missing":
            turn.pop(rng.choice(["from", "value"]))
        elif change == "extend":
            turns += [{"from": "human", "value": "And?"}, {"from": "gpt", "value": "blue"}][: rng.choice([1, 2])]
        elif change == "empty":
            row["conversations"] = []
        elif change == "long":
            turn["value"] = "red " * rng.choice([50, 400])
        else:
            turns.pop(rng.randrange(len(turns)))
    elif kind == "answers":
        row["answers"] = rng.choice(["red", ["red", "dark red"], [], [""], ["red", 3], "", [["red"]]])
    elif kind == "task":
        row["task"] = rng.choice(["vqa", "caption", "multiple_choice", "story", "", "VQA"])
    elif kind == "options":
        row["task"] = "multiple_choice"
        row["options"] = rng.choice([["red", "blue"], [], "red", [1, 2], ["a"]])
        row["conversations"][1]["value"] = rng.choice(["A", "B", "C", "red"])
    else:
        row[rng.choice(["answer", "Image", "conversation", "meta"])] = rng.choice(ODD_VALUES)
    return row


def _turn_list(turns) -> bool:
    return isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, dict) for t in turns)


def _write(rng: random.Random, path, rows: list) -> None:
    """The rows as JSON, or one of the file-level faults."""
    text = json.dumps(rows, ensure_ascii=False)
    fault = rng.choice(["none"] * 6 + ["truncate", "bytes", "latin1", "top", "jsonl", "jsonl_bad"])
    if fault == "truncate":
        path.write_text(text[: rng.randrange(1, max(2, len(text)))], encoding="utf-8")
    elif fault == "bytes":
        path.write_bytes(rng.randbytes(rng.choice([0, 1, 64, 2048])))
    elif fault == "latin1":
        path.write_bytes(text.replace("colour", "co\u00e9lour").encode("latin-1", errors="replace"))
    elif fault == "top":
        path.write_text(json.dumps(rng.choice([{"data": rows}, 3, None, "rows", True])))
    elif fault.startswith("jsonl"):
        lines = [json.dumps(r) for r in rows]
        if fault == "jsonl_bad":
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(["{", "[1,", "nope", '{"id": }']))
        path.with_suffix(".jsonl").write_text("\n".join(lines))
        path.unlink(missing_ok=True)
        return
    else:
        path.write_text(text, encoding="utf-8")


def _references(row: dict) -> tuple:
    answers = row.get("answers")
    if isinstance(answers, str):
        return (answers,)
    return tuple(answers) if answers else (row["conversations"][-1]["value"].replace("<image>", "").strip(),)


@pytest.mark.parametrize("chunk", range(4))
def test_malformed_input_trains_whole_or_stops_with_one_line(tmp_path, images, tiny_backbone, chunk):
    model = tiny_backbone.model
    outcomes = {"trained": 0, "refused": 0}
    for case in range(chunk * CASES // 4, (chunk + 1) * CASES // 4):
        rng = random.Random(case)
        rows = [_valid_row(i) for i in range(rng.randint(1, 4))]
        for _ in range(rng.randint(1, 3)):
            j = rng.randrange(len(rows))
            rows[j] = _mutate_row(rng, rows[j])
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        path = folder / "train.json"
        _write(rng, path, rows)
        file = path if path.exists() else path.with_suffix(".jsonl")
        source = LlavaJsonSource("fuzz", str(images), train=str(file))
        dm = MLLMDataModule(tiny_backbone.processor, source, batch_size=2, max_length=160)
        try:
            dm.setup("fit")
        except UserInputError as err:
            message = str(err)
            assert "\n" not in message and len(message) < 800, f"case {case}: {message}"
            assert str(file) in message or "record" in message or "fuzz" in message, f"case {case}: {message}"
            outcomes["refused"] += 1
            continue
        except Exception as err:  # a traceback from inside a library: the defect this test exists for
            raise AssertionError(f"case {case}: {type(err).__name__}: {err}\nrows: {json.dumps(rows)[:500]}") from err
        records = dm.split(source, "train").records
        assert len(records) == len(rows), f"case {case}: records lost"
        assert [r.answers for r in records] == [_references(row) for row in rows], f"case {case}"
        for batch in dm.train_dataloader():
            with torch.no_grad():
                loss = model(**batch["model_inputs"], labels=batch["labels"]).loss
            assert torch.isfinite(loss), f"case {case}"
        outcomes["trained"] += 1
    assert outcomes["trained"] > 5 and outcomes["refused"] > 20, outcomes  # both paths are exercised
