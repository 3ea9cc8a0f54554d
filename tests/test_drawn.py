"""The drawn upstream skills: deterministic, split-disjoint, and each answer true of its picture."""

import numpy as np
import pytest

from mllmft.data import CountingSource, PositionsSource, ShapesSource, SkillMix

SKILLS = (ShapesSource, PositionsSource, CountingSource)


def _ink(record) -> np.ndarray:
    """The drawn things' pixels: saturated colour, where the light background's channels differ by at most 30."""
    rgb = np.asarray(record.images[0]).astype(int)
    return rgb.max(axis=2) - rgb.min(axis=2) > 60


@pytest.mark.parametrize("skill", SKILLS)
def test_a_skill_is_deterministic_its_splits_differ_and_its_answers_are_in_its_corpus(skill):
    a, b = skill(sizes={"train": 12}).records("train"), skill(sizes={"train": 12}).records("train")
    assert [r.answers for r in a] == [r.answers for r in b]
    assert all(np.array_equal(np.asarray(x.images[0]), np.asarray(y.images[0])) for x, y in zip(a, b))
    test = skill(sizes={"test": 12}).records("test")
    assert not any(np.array_equal(np.asarray(x.images[0]), np.asarray(y.images[0])) for x, y in zip(a, test))
    assert len({r.id for r in a + test}) == 24
    corpus = skill().corpus()  # what the tiny tokenizer learns from: every question, every answer's words
    words = {w for text in corpus for w in text.split()}
    assert all(r.turns[0].text in corpus and set(r.answers[0].split()) <= words for r in a + test)
    assert skill(name="renamed", sizes={"test": 3}).records("test")[0].answers == test[0].answers


def test_positions_answer_names_the_quadrant_the_shape_is_in():
    records = PositionsSource(sizes={"test": 40}).records("test")
    assert {r.answers[0] for r in records} == set(PositionsSource.ANSWERS)
    for record in records:
        ys, xs = np.nonzero(_ink(record))
        half = record.images[0].size[0] / 2
        where = f"{'top' if ys.mean() < half else 'bottom'} {'left' if xs.mean() < half else 'right'}"
        assert where == record.answers[0], record.id


def _blobs(mask: np.ndarray) -> int:
    """Connected components (4-neighbour flood fill)."""
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count, stack = count + 1, [start]
        while stack:
            y, x = stack.pop()
            if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x] and not seen[y, x]:
                seen[y, x] = True
                stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    return count


def test_counting_answer_is_the_number_of_dots_drawn():
    records = CountingSource(sizes={"test": 40}).records("test")
    words = ("zero", "one", "two", "three", "four", "five", "six")
    assert {r.answers[0] for r in records} == set(words[1:])
    for record in records:
        assert words[_blobs(_ink(record))] == record.answers[0], record.id


def test_a_skill_mix_interleaves_every_record_of_its_sources_once():
    sources = {"shapes": ShapesSource(sizes={"train": 3}), "counting": CountingSource(sizes={"train": 5})}
    mixed = SkillMix(sources).records("train")
    assert [r.id for r in mixed] == [
        "shapes-train-0", "counting-train-0", "shapes-train-1", "counting-train-1", "shapes-train-2",
        "counting-train-2", "counting-train-3", "counting-train-4",
    ]  # fmt: skip
    assert [r.id for r in SkillMix(sources, sizes={"train": 3}).records("train")] == [r.id for r in mixed[:3]]
    with pytest.raises(ValueError, match="at least one source"):
        SkillMix({})
