"""The general benchmarks, as upstream (test-only) sets: POPE, MME, MMBench (EN / CN), SEED-Bench (image).

Each reader takes the benchmark's published files as they are distributed and writes, into the
record id, the grouping its scoring rule needs (``mllmft/metrics/general.py``): ``<group>|<item>|<k>``.
``sizes: {test: N}`` keeps the first N *questions* (MMBench: before rotation; MME: N images, each
with both its questions), so a quick run still scores whole groups.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import sys
from pathlib import Path

from PIL import Image

from mllmft.data.file_source import FileSource
from mllmft.data.llava_json import parse_json, read_text
from mllmft.data.record import Record, single_turn
from mllmft.data.sizes import check_sizes, keep_first
from mllmft.data.vqa_sets import CHOICE_SUFFIX, letter_options
from mllmft.errors import DataError
from mllmft.metrics.general import MME_COGNITION, MME_PERCEPTION

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class _QuestionLimit(FileSource):
    """``sizes`` counts questions (or images) in ``read``, not records afterwards."""

    def __init__(self, *args, sizes: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = check_sizes(sizes, f"data set {self.name!r}: sizes")

    def limit(self, split: str, items: list) -> list:
        return keep_first(items, self.limits, split)


class POPE(_QuestionLimit):
    """POPE (COCO): ``coco_pope_{random,popular,adversarial}.json``, one JSON object per line:
    {"question_id", "image", "text", "label": "yes" | "no"}; images in ``image_root`` (COCO val2014).
    Scored with POPE's rule (``pope``: F1 headline, accuracy, precision, recall, yes ratio)."""

    metric = "pope"

    def read(self, path: Path, split: str) -> list[Record]:
        text = read_text(path).strip()
        if text.startswith("["):
            rows = parse_json(text, str(path))
        else:
            rows = [parse_json(line, f"{path}:{n}") for n, line in enumerate(text.splitlines(), 1) if line]
        out = []
        for row in self.limit(split, rows):
            label = str(row["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise DataError(
                    f"data set {self.name!r}: question {row['question_id']} has label {label!r}; POPE's are yes / no"
                )
            out.append(
                single_turn(
                    f"pope|{row['question_id']}",
                    self.image_root / row["image"],
                    self.prompt.format(question=row["text"]),
                    label,
                    "vqa",
                    origin=str(path),
                )
            )
        return out


class MME(_QuestionLimit):
    """MME (``MME_Benchmark_release_version/``): one folder per subtask; in it the images with, beside
    each, a ``.txt`` of "question<TAB>answer" lines (two per image, Yes / No), or (artwork, celebrity,
    landmark, posters, scene) ``images/`` and ``questions_answers_YN/``. ``files: {test: .}``: the
    release folder itself. The questions carry MME's own instruction ("Please answer yes or no.")."""

    metric = "mme"
    SUBTASKS = MME_PERCEPTION + MME_COGNITION

    def __init__(self, *args, prompt: str = "{question}", **kwargs):
        super().__init__(*args, prompt=prompt, **kwargs)

    def read(self, path: Path, split: str) -> list[Record]:
        pairs = []  # (subtask, image, txt)
        for subtask in self.SUBTASKS:
            folder = path / subtask
            if not folder.is_dir():
                continue
            if (folder / "questions_answers_YN").is_dir():
                texts = sorted((folder / "questions_answers_YN").glob("*.txt"))
                pairs += [(subtask, self._image(folder / "images", t.stem, t), t) for t in texts]
            else:
                pairs += [(subtask, self._image(folder, t.stem, t), t) for t in sorted(folder.glob("*.txt"))]
        if not pairs:
            raise DataError(
                f"data set {self.name!r}: no MME subtask folder in {path} (expected some of {', '.join(self.SUBTASKS)})"
            )
        out = []
        for subtask, image, txt in self.limit(split, pairs):
            for k, line in enumerate(line for line in read_text(txt).splitlines() if line.strip()):
                question, answer = (part.strip() for part in line.split("\t"))
                if answer.lower() not in ("yes", "no"):
                    raise DataError(f"data set {self.name!r}: {txt}:{k + 1}: answer {answer!r}; MME's are Yes / No")
                out.append(
                    single_turn(
                        f"{subtask}|{image.name}|{k}",
                        image,
                        self.prompt.format(question=question),
                        answer,
                        "vqa",
                        origin=str(txt),
                        image_root=path,
                    )
                )
        return out

    def _image(self, folder: Path, stem: str, txt: Path) -> Path:
        for suffix in IMAGE_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
        raise DataError(f"data set {self.name!r}: no image for {txt} in {folder} ({'/'.join(IMAGE_SUFFIXES)})")


class MMBench(_QuestionLimit):
    """MMBench dev TSV (``MMBench_DEV_EN.tsv``, ``MMBench_DEV_CN.tsv``): index, question, hint, A-D,
    answer, category, image (base64; a short number instead names the row whose image it shares).
    Every question is asked once per rotation of its options (circular evaluation, ``mmbench``); the
    prompt is LLaVA's: hint, question, the options, then the letter instruction (``lang: cn``: its
    Chinese form)."""

    metric = "mmbench"
    SUFFIX = {"en": CHOICE_SUFFIX, "cn": "请直接回答选项字母。"}

    def __init__(self, *args, lang: str = "en", **kwargs):
        if lang not in self.SUFFIX:
            raise DataError(f"MMBench lang {lang!r}; expected one of {sorted(self.SUFFIX)}")
        super().__init__(*args, **kwargs)
        self.lang = lang

    def read(self, path: Path, split: str) -> list[Record]:
        csv.field_size_limit(sys.maxsize)  # base64 images are long fields
        rows = list(csv.DictReader(io.StringIO(read_text(path)), delimiter="\t"))
        images = {row["index"]: row["image"] for row in rows}
        out = []
        for row in self.limit(split, rows):
            options = [row[c] for c in "ABCD" if (row.get(c) or "").strip() and row[c].strip().lower() != "nan"]
            correct = "ABCD".index(row["answer"].strip().upper())
            image = images.get(row["image"], row["image"]) if len(row["image"]) <= 64 else row["image"]
            hint = (row.get("hint") or "").strip()
            for k in range(len(options)):
                rotated = options[k:] + options[:k]
                letter = chr(ord("A") + (correct - k) % len(options))
                question = "\n".join(
                    p
                    for p in (
                        hint if hint.lower() != "nan" else "",
                        row["question"],
                        letter_options(rotated),
                        self.SUFFIX[self.lang],
                    )
                    if p
                )
                out.append(
                    single_turn(
                        f"{row.get('category', 'all')}|{row['index']}|{k}",
                        _Base64Image(image),
                        question,
                        letter,
                        "multiple_choice",
                        origin=f"{path} index {row['index']}",
                        options=tuple(rotated),
                    )
                )
        return out


class _Base64Image:
    """An image decoded when it is needed (a dev TSV holds ~4,000 of them)."""

    def __init__(self, data: str):
        self.data = data

    def __call__(self) -> Image.Image:
        try:
            return Image.open(io.BytesIO(base64.b64decode(self.data)))
        except (binascii.Error, OSError) as err:
            raise DataError(f"MMBench: an image is not a base64-encoded picture ({err})") from err


class SEEDBench(_QuestionLimit):
    """SEED-Bench (v1) ``SEED-Bench.json``: {"questions": [{question_id, question, choice_a..d, answer,
    data_id, data_type, question_type_id}], "question_type": {dimension: id}}; the image questions
    (``data_type: image``), images ``<image_root>/<data_id>`` (or ``<data_id>.jpg``). Scored per
    dimension (``seed_bench``)."""

    prompt_fields = ("question", "options")

    metric = "seed_bench"
    PROMPT = "{question}\n{options}\n" + CHOICE_SUFFIX

    def __init__(self, *args, prompt: str | None = None, **kwargs):
        super().__init__(*args, prompt=prompt or self.PROMPT, **kwargs)

    def read(self, path: Path, split: str) -> list[Record]:
        data = self.load_json(path)
        dimensions = {v: k for k, v in data["question_type"].items()}
        questions = [q for q in data["questions"] if q.get("data_type", "image") == "image"]
        out = []
        for q in self.limit(split, questions):
            options = tuple(q[f"choice_{c}"] for c in "abcd")
            prompt = self.prompt.format(question=q["question"], options=letter_options(list(options)))
            out.append(
                single_turn(
                    f"{dimensions[q['question_type_id']]}|{q['question_id']}",
                    self._image(q["data_id"]),
                    prompt,
                    q["answer"].strip().upper(),
                    "multiple_choice",
                    origin=str(path),
                    options=options,
                )
            )
        return out

    def _image(self, data_id: str) -> Path:
        """``<image_root>/<data_id>``, or with ``.jpg`` added where the archive's names carry it."""
        path = self.image_root / data_id
        with_suffix = path.parent / f"{path.name}.jpg"
        return with_suffix if not path.exists() and with_suffix.exists() else path
