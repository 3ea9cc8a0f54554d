"""The offline benchmark's target: scikit-learn's 1,797 real 8x8 handwritten digits, upsampled.

It asks the drawn shapes' caption prompt (``mllmft.data.drawn``) and answers in the counting skill's
number words, so fine-tuning on it and testing on the drawn skills measures forgetting: a model that
learns to say "a handwritten seven" to every "Describe the image." has forgotten shapes.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from PIL import Image

from mllmft.data.drawn import CAPTION_PROMPT, NUMBER_WORDS, check_split
from mllmft.data.record import Record, single_turn
from mllmft.data.sizes import check_sizes, keep_first


class DigitsSource:
    """scikit-learn's real handwritten digits: "Which digit is this?" and a caption, per image.

    The split is fixed (a seeded permutation of the 1,797 images) so every run sees the same test set.
    """

    QUESTION = "Which digit is this?"
    max_new_tokens = 8  # the test's generation length: the longest answer is 5 tokens; a longer one is wrong anyway
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
        check_split(split)
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
