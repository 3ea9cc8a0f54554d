"""The offline benchmark that ships with the package: two image distributions that need no download.

* ``ShapesSource``: procedurally drawn scenes of one to three coloured shapes (deterministic by seed).
* ``DigitsSource``: scikit-learn's 1,797 real 8x8 handwritten digits, upsampled.

Both ask the same caption prompt, so fine-tuning on one and testing on the other measures forgetting:
a model that learns to say "a handwritten seven" to every "Describe the image." has forgotten shapes.
"""

from __future__ import annotations

import random
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw

from mllmft.data.record import Record, single_turn
from mllmft.data.sizes import SPLITS, check_sizes, keep_first

CAPTION_PROMPT = "Describe the image."
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


class ShapesSource:
    """Scenes of n in {1, 2, 3} shapes of one kind and one colour on a light background.

    Record i of a split asks, in turn, for a caption ("two red circles"), the colour, the shape and the
    count. Each split draws from its own seed stream, so no scene repeats across splits.
    """

    COLOURS = {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 80, 220),
        "yellow": (230, 200, 30),
        "purple": (140, 60, 180),
        "orange": (240, 130, 30),
    }
    SHAPES = ("circle", "square", "triangle")
    QUESTIONS = {
        "colour": "What colour are the shapes?",
        "shape": "What shape is in the image?",
        "count": "How many shapes are there?",
    }

    def __init__(
        self,
        name: str = "shapes",
        sizes: dict | None = None,
        seed: int = 0,
        image_size: int = 64,
        metric: str = "exact_match",
        metric_args: dict | None = None,
    ):
        self.name = name
        self.metric = metric
        self.metric_args = dict(metric_args or {})
        # null keeps a split's default count: the scenes are drawn, not read, so there is no "all"
        drawn = {split: n for split, n in check_sizes(sizes, f"data set {name!r}: sizes").items() if n is not None}
        self.sizes = {"train": 4000, "val": 120, "test": 240, **drawn}
        self.seed = seed
        self.image_size = image_size

    def records(self, split: str) -> list[Record]:
        _check_split(split)
        rng = random.Random(f"shapes/{self.seed}/{split}")
        out = []
        for i in range(self.sizes[split]):
            colour = rng.choice(list(self.COLOURS))
            shape = rng.choice(self.SHAPES)
            count = rng.randint(1, 3)
            image = self._draw(rng, colour, shape, count)
            kind = ("caption", "colour", "shape", "count")[i % 4]
            rid = f"shapes-{split}-{i}"
            if kind == "caption":
                noun = shape if count == 1 else shape + "s"
                out.append(single_turn(rid, image, CAPTION_PROMPT, f"{NUMBER_WORDS[count]} {colour} {noun}", "caption"))
            else:
                answer = {"colour": colour, "shape": shape, "count": NUMBER_WORDS[count]}[kind]
                out.append(single_turn(rid, image, self.QUESTIONS[kind], answer, "vqa"))
        return out

    def _draw(self, rng: random.Random, colour: str, shape: str, count: int) -> Image.Image:
        s = self.image_size
        bg = tuple(rng.randint(225, 255) for _ in range(3))
        im = Image.new("RGB", (s, s), bg)
        draw = ImageDraw.Draw(im)
        cells = rng.sample(range(4), count)  # one shape per quadrant: counts stay countable
        for cell in cells:
            r = rng.randint(s // 8, s // 5)
            cx = (cell % 2) * s // 2 + s // 4 + rng.randint(-s // 16, s // 16)
            cy = (cell // 2) * s // 2 + s // 4 + rng.randint(-s // 16, s // 16)
            fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in self.COLOURS[colour])
            if shape == "circle":
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
            elif shape == "square":
                draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        return im

    def corpus(self) -> list[str]:
        """Every string this source can produce, for training a tiny tokenizer."""
        words = [
            f"{n} {c} {s}{'' if n == 'one' else 's'}"
            for n in NUMBER_WORDS[1:4]
            for c in self.COLOURS
            for s in self.SHAPES
        ]
        return [CAPTION_PROMPT, *self.QUESTIONS.values(), *words]


class DigitsSource:
    """scikit-learn's real handwritten digits: "Which digit is this?" and a caption, per image.

    The split is fixed (a seeded permutation of the 1,797 images) so every run sees the same test set.
    """

    QUESTION = "Which digit is this?"
    FRACTIONS = {"test": 0.2, "val": 0.08}

    def __init__(
        self,
        name: str = "digits",
        sizes: dict | None = None,
        image_size: int = 64,
        metric: str = "exact_match",
        metric_args: dict | None = None,
    ):
        self.name = name
        self.metric = metric
        self.metric_args = dict(metric_args or {})
        self.sizes = check_sizes(sizes, f"data set {name!r}: sizes")
        self.image_size = image_size

    @cached_property
    def _split_indices(self) -> dict[str, np.ndarray]:
        n = len(self._digits.images)
        order = np.random.default_rng(12345).permutation(n)
        n_test, n_val = int(n * self.FRACTIONS["test"]), int(n * self.FRACTIONS["val"])
        return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}

    @cached_property
    def _digits(self):
        from sklearn.datasets import load_digits

        return load_digits()

    def records(self, split: str) -> list[Record]:
        _check_split(split)
        out = []
        for idx in self._split_indices[split]:
            pixels = (self._digits.images[idx] * (255.0 / 16.0)).astype(np.uint8)
            image = (
                Image.fromarray(pixels, mode="L")
                .resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                .convert("RGB")
            )
            word = NUMBER_WORDS[int(self._digits.target[idx])]
            base = f"digits-{split}-{idx}"
            out.append(single_turn(f"{base}-vqa", image, self.QUESTION, word, "vqa"))
            out.append(single_turn(f"{base}-caption", image, CAPTION_PROMPT, f"a handwritten {word}", "caption"))
        return keep_first(out, self.sizes, split)

    def corpus(self) -> list[str]:
        return [CAPTION_PROMPT, self.QUESTION, *(f"a handwritten {w}" for w in NUMBER_WORDS), *NUMBER_WORDS]
