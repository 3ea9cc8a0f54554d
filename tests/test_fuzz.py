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

from mllmft.data import LlavaJsonSource, MLLMDataModule, read_llava_json
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


# --- random JSON shapes through the reader alone (no model): fast, so many more cases ----------------

SHAPE_CASES = 2000
SHAPE_KEYS = ["id", "image", "images", "conversations", "messages", "answers", "options", "task"]
SHAPE_KEYS += ["from", "value", "role", "content", "type", "text", "answer", "x"]
SHAPE_STRINGS = ["", " ", "red", "<image>", "<image>\nColour?", "img.png", "../x.png", "human", "gpt", "user"]
SHAPE_STRINGS += [
    "assistant",
    "system",
    "text",
    "image",
    "vqa",
    "caption",
    "multiple_choice",
    "A",
    "\u0000",
    "\U0001f600",
]
DEEP = "@deep@"  # replaced in the file's text by nesting deeper than Python's parser recurses, or just under


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "float", "str", "str", "list", "dict"][: 8 if depth < 4 else 6]
    kind = rng.choice(kinds)
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {rng.choice(SHAPE_KEYS): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return {
        "null": None,
        "bool": rng.random() < 0.5,
        "int": rng.choice([0, -1, 7, 10**30]),
        "float": rng.choice([0.5, -2.0, 1e308]),
        "str": rng.choice(SHAPE_STRINGS),
    }[kind]


def _shape_row(rng: random.Random, i: int) -> dict:
    if rng.random() < 0.5:
        return _valid_row(i)
    return {
        "id": i,
        "images": ["ok.png"],
        "messages": [
            {
                "role": "user",
                "content": rng.choice(["<image>Colour?", [{"type": "image"}, {"type": "text", "text": "Q"}]]),
            },
            {"role": "assistant", "content": "red"},
        ],
    }


def _paths(value, path=()):
    """Every position in a JSON value: a tuple of keys and indices from the top."""
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, (*path, key))


def _put(value, path: tuple, new):
    if not path:
        return new
    value[path[0]] = _put(value[path[0]], path[1:], new)
    return value


def _reshape(rng: random.Random, rows: list) -> list:
    """A wrong type at some level: a node replaced by a random value (or by deep nesting), or a key
    added to an object."""
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(_paths(rows)))
        node = rows
        for key in path:
            node = node[key]
        if isinstance(node, dict) and rng.random() < 0.3:
            node[rng.choice(SHAPE_KEYS)] = _random_value(rng)
        else:
            rows = _put(rows, path, DEEP if rng.random() < 0.1 else _random_value(rng))
    return rows


def _last_text(row: dict):
    """The last turn's text as the row gives it (placeholders removed), when it is a plain string."""
    turns = row.get("conversations") or row.get("messages")
    last = turns[-1].get("value", turns[-1].get("content"))
    return last.replace("<image>", "").strip() if isinstance(last, str) else None


@pytest.mark.parametrize("chunk", range(2))
def test_random_json_shapes_load_correctly_or_stop_with_one_line(tmp_path, chunk):
    """Nesting and wrong types at every level of a conversation file: the reader gives the records the
    rows describe, or one line naming the file; never another exception."""
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(chunk * SHAPE_CASES // 2, (chunk + 1) * SHAPE_CASES // 2):
        rng = random.Random(f"shape{case}")
        rows = [_shape_row(rng, i) for i in range(rng.randint(1, 3))]
        rows = _reshape(rng, rows) if rng.random() < 0.9 else rows
        suffix = ".jsonl" if isinstance(rows, list) and rng.random() < 0.3 else ".json"
        text = "\n".join(json.dumps(r) for r in rows) if suffix == ".jsonl" else json.dumps(rows)
        depth = rng.choice([200, 990, 3000, 100_000])
        path = tmp_path / f"case{case}{suffix}"
        path.write_text(text.replace(json.dumps(DEEP), "[" * depth + "]" * depth), encoding="utf-8")
        try:
            records = read_llava_json(path, tmp_path)
        except UserInputError as err:
            message = str(err)
            assert "\n" not in message and len(message) < 800, f"case {case}: {message}"
            assert str(path) in message, f"case {case}: {message}"
            outcomes["refused"] += 1
            continue
        except Exception as err:  # a traceback from inside the reader or a library: the defect
            raise AssertionError(f"case {case}: {type(err).__name__}: {err}\nrows: {text[:500]}") from err
        assert len(records) == len(rows), f"case {case}: records lost"
        for record, row in zip(records, rows):
            images = row.get("image", row.get("images"))
            assert record.images == tuple(tmp_path / p for p in ([images] if isinstance(images, str) else images))
            assert record.id == str(row["id"]) if "id" in row else record.origin in record.id
            if _last_text(row) is not None:
                assert record.turns[-1].text == _last_text(row), f"case {case}"
            if row.get("answers"):
                assert record.answers == tuple([row["answers"]] if isinstance(row["answers"], str) else row["answers"])
            else:
                assert record.answers == (record.turns[-1].text,), f"case {case}"
        outcomes["loaded"] += 1
    assert outcomes["loaded"] > 20 and outcomes["refused"] > 100, outcomes  # both paths are exercised
