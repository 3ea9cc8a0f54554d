"""The built-in upstream skills: scenes drawn procedurally, deterministic by seed, nothing to download.

The tiny default model is pre-trained on all of them at once (``SkillMix``), then fine-tuned on digits;
each is its own upstream test set, so S_u averages several skills and forgetting can be partial (a
fine-tuned model may keep where things are and lose what they are called).

* ``ShapesSource``: one to three shapes of one kind and colour; a caption, or their colour, shape, count.
* ``PositionsSource``: one shape in one of the four quadrants; where it is ("top left").
* ``CountingSource``: one to six dots; how many (number words, the words the digits target answers with).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from PIL import Image, ImageDraw

from mllmft.data.record import Record, single_turn
from mllmft.data.sizes import SPLITS, check_sizes, keep_first

CAPTION_PROMPT = "Describe the image."
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
SHAPES = ("circle", "square", "triangle")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


class DrawnSource:
    """What every drawn skill shares: its sizes, a seed stream per split (no scene repeats across
    splits), the light background and the jittered colours. A skill draws record ``i`` in ``record``."""

    STREAM = ""  # the seed stream's and the record ids' prefix (fixed: a renamed set keeps its scenes)
    # the test's generation length: the longest answer is 5 tokens (tiny BPE); a longer one is wrong anyway
    max_new_tokens = 8
    QUESTIONS: tuple[str, ...] = ()
    ANSWERS: tuple[str, ...] = ()

    def __init__(
        self,
        name: str | None = None,
        sizes: dict | None = None,
        seed: int = 0,
        image_size: int = 64,
        metric: str = "exact_match",
        metric_args: dict | None = None,
    ):
        self.name = name or self.STREAM
        self.metric = metric
        self.metric_args = dict(metric_args or {})
        # null keeps a split's default count: the scenes are drawn, not read, so there is no "all"
        drawn = {split: n for split, n in check_sizes(sizes, f"data set {self.name!r}: sizes").items() if n is not None}
        self.sizes = {"train": 4000, "val": 120, "test": 300, **drawn}
        self.seed = seed
        self.image_size = image_size

    def records(self, split: str) -> list[Record]:
        check_split(split)
        rng = random.Random(f"{self.STREAM}/{self.seed}/{split}")
        return [self.record(rng, i, f"{self.STREAM}-{split}-{i}") for i in range(self.sizes[split])]

    def record(self, rng: random.Random, i: int, rid: str) -> Record:
        raise NotImplementedError

    def corpus(self) -> list[str]:
        """Every string this source can produce, for training a tiny tokenizer."""
        return [*self.QUESTIONS, *self.ANSWERS]

    def canvas(self, rng: random.Random) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        s = self.image_size
        image = Image.new("RGB", (s, s), tuple(rng.randint(225, 255) for _ in range(3)))
        return image, ImageDraw.Draw(image)

    @staticmethod
    def fill(rng: random.Random, colour: str) -> tuple[int, ...]:
        return tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])

    def quadrant_centre(self, rng: random.Random, cell: int) -> tuple[int, int]:
        """Centre of quadrant ``cell`` (0 top left, 1 top right, 2 bottom left, 3 bottom right), jittered."""
        s = self.image_size
        return (
            (cell % 2) * s // 2 + s // 4 + rng.randint(-s // 16, s // 16),
            (cell // 2) * s // 2 + s // 4 + rng.randint(-s // 16, s // 16),
        )


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill: tuple[int, ...]) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


class ShapesSource(DrawnSource):
    """Scenes of n in {1, 2, 3} shapes of one kind and one colour, one per quadrant.

    Record i of a split asks, in turn, for a caption ("two red circles"), the colour, the shape and the count.
    """

    STREAM = "shapes"
    COLOURS = COLOURS
    SHAPES = SHAPES
    QUESTION_OF = {
        "colour": "What colour are the shapes?",
        "shape": "What shape is in the image?",
        "count": "How many shapes are there?",
    }
    QUESTIONS = (CAPTION_PROMPT, *QUESTION_OF.values())
    ANSWERS = tuple(
        f"{n} {c} {s}{'' if n == 'one' else 's'}" for n in NUMBER_WORDS[1:4] for c in COLOURS for s in SHAPES
    )

    def record(self, rng: random.Random, i: int, rid: str) -> Record:
        colour, shape, count = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.randint(1, 3)
        image, draw = self.canvas(rng)
        for cell in rng.sample(range(4), count):  # one shape per quadrant: counts stay countable
            r = rng.randint(self.image_size // 8, self.image_size // 5)
            draw_shape(draw, shape, *self.quadrant_centre(rng, cell), r, self.fill(rng, colour))
        kind = ("caption", "colour", "shape", "count")[i % 4]
        if kind == "caption":
            noun = shape if count == 1 else shape + "s"
            return single_turn(rid, image, CAPTION_PROMPT, f"{NUMBER_WORDS[count]} {colour} {noun}", "caption")
        answer = {"colour": colour, "shape": shape, "count": NUMBER_WORDS[count]}[kind]
        return single_turn(rid, image, self.QUESTION_OF[kind], answer, "vqa")


class PositionsSource(DrawnSource):
    """One shape of any kind and colour in one of the four quadrants: "Where is the shape?" "bottom left"."""

    STREAM = "positions"
    QUESTIONS = ("Where is the shape?",)
    ANSWERS = ("top left", "top right", "bottom left", "bottom right")

    def record(self, rng: random.Random, i: int, rid: str) -> Record:
        colour, shape, cell = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.randrange(4)
        image, draw = self.canvas(rng)
        r = rng.randint(self.image_size // 8, self.image_size // 5)
        draw_shape(draw, shape, *self.quadrant_centre(rng, cell), r, self.fill(rng, colour))
        return single_turn(rid, image, self.QUESTIONS[0], self.ANSWERS[cell], "vqa")


class CountingSource(DrawnSource):
    """One to six dots of one colour, each in its own cell of a 3 x 3 grid: "How many dots are there?"."""

    STREAM = "counting"
    MAX_DOTS = 6
    QUESTIONS = ("How many dots are there?",)
    ANSWERS = NUMBER_WORDS[1 : MAX_DOTS + 1]

    def record(self, rng: random.Random, i: int, rid: str) -> Record:
        colour, count = rng.choice(list(COLOURS)), rng.randint(1, self.MAX_DOTS)
        image, draw = self.canvas(rng)
        s, cell_size = self.image_size, self.image_size // 3
        for cell in rng.sample(range(9), count):
            r = rng.randint(s // 14, s // 10)
            cx = (cell % 3) * cell_size + cell_size // 2 + rng.randint(-s // 32, s // 32)
            cy = (cell // 3) * cell_size + cell_size // 2 + rng.randint(-s // 32, s // 32)
            draw_shape(draw, "circle", cx, cy, r, self.fill(rng, colour))
        return single_turn(rid, image, self.QUESTIONS[0], NUMBER_WORDS[count], "vqa")


class SkillMix:
    """Several sources as one set, for pre-training on all of them at once: each split interleaves the
    sources' records (one of each in turn, then what the longer ones have left), so every batch mixes them;
    ``sizes`` keeps the first records of the mix."""

    def __init__(
        self,
        sources: Mapping[str, object],
        name: str = "skills",
        metric: str = "exact_match",
        sizes: dict | None = None,
    ):
        if not sources:
            raise ValueError("SkillMix needs at least one source")
        self.sources = dict(sources)
        self.name = name
        self.metric = metric
        self.metric_args: dict = {}
        self.sizes = check_sizes(sizes, f"data set {name!r}: sizes")

    def records(self, split: str) -> list[Record]:
        streams = [source.records(split) for source in self.sources.values()]  # type: ignore[attr-defined]
        longest = max(len(s) for s in streams)
        return keep_first([s[k] for k in range(longest) for s in streams if k < len(s)], self.sizes, split)
