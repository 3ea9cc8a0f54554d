"""The general benchmarks' own scoring rules (POPE, MME, MMBench's circular evaluation, SEED-Bench).

Their readers (``mllmft/data/general_sets.py``) write the grouping each rule needs into the record
id, as ``<group>|<item>|<k>`` fields (MME: subtask | image | question; MMBench: category | question
index | rotation; SEED-Bench: dimension | question id): the predictions files show it too.

Each summary's ``score`` (0-100) is the number that enters S_u; the benchmark's own figures are
reported beside it (``details`` in results.json).
"""

from __future__ import annotations

from collections import defaultdict

from mllmft.metrics.generated import Answer, GeneratedAnswers
from mllmft.metrics.multiple_choice import MultipleChoiceAccuracy, parse_choice

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def _fields(answer: Answer) -> list[str]:
    return answer.id.split("|")


def pope_answer(text: str) -> str:
    """LLaVA's POPE rule: the first sentence, commas dropped; "no" if it holds the word No / no / not."""
    text = text.split(".")[0] if "." in text else text
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


class POPEScores(GeneratedAnswers):
    """POPE: "yes" is the positive class. score = F1 x 100 (the LLaVA papers' headline); accuracy,
    precision, recall and the share of "yes" answers beside it."""

    name = "pope"

    def score(self, answers):
        predicted = [pope_answer(a.prediction) == "yes" for a in answers]
        truth = [a.references[0].strip().lower() == "yes" for a in answers]
        tp = sum(p and t for p, t in zip(predicted, truth))
        fp = sum(p and not t for p, t in zip(predicted, truth))
        fn = sum(t and not p for p, t in zip(predicted, truth))
        tn = len(answers) - tp - fp - fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_sample = [float(p == t) for p, t in zip(predicted, truth)]
        return {
            "score": 100 * f1,
            "accuracy": 100 * (tp + tn) / len(answers),
            "precision": 100 * precision,
            "recall": 100 * recall,
            "yes_ratio": 100 * sum(predicted) / len(answers),
        }, per_sample


def mme_answer(text: str) -> str:
    """MME's official rule: "yes" / "no" as the whole answer, else within its first 4 characters; else "other"."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


class MMEScore(GeneratedAnswers):
    """MME: per subtask, acc (% questions right) + acc+ (% images with both questions right), 0-200;
    perception and cognition the sums over their subtasks (MME's 0-2000 and 0-800 scales). score =
    their total ÷ (200 x the subtasks present) x 100: the mean of (acc + acc+) / 2, a percentage."""

    name = "mme"

    def score(self, answers):
        right = [float(mme_answer(a.prediction) == a.references[0].strip().lower()) for a in answers]
        questions: dict[str, list[float]] = defaultdict(list)
        images: dict[tuple[str, str], list[float]] = defaultdict(list)
        for a, r in zip(answers, right):
            subtask, image = _fields(a)[:2]
            questions[subtask].append(r)
            images[(subtask, image)].append(r)
        summary = {}
        for subtask, marks in sorted(questions.items()):
            per_image = [min(v) for (s, _), v in images.items() if s == subtask]
            acc, acc_plus = 100 * sum(marks) / len(marks), 100 * sum(per_image) / len(per_image)
            summary[f"{subtask}/acc"], summary[f"{subtask}/acc_plus"] = acc, acc_plus
            summary[subtask] = acc + acc_plus
        perception = sum(summary[s] for s in questions if s in MME_PERCEPTION)
        cognition = sum(summary[s] for s in questions if s in MME_COGNITION)
        total = sum(summary[s] for s in questions)
        return {
            "score": total / (2 * len(questions)),
            "perception": perception,
            "cognition": cognition,
            **summary,
        }, right


class MMBenchCircular(MultipleChoiceAccuracy):
    """MMBench's circular evaluation: a question is right only if every rotation of its options is
    answered right. score = that accuracy x 100; ``vanilla`` (the unrotated pass alone) and each
    category's circular accuracy beside it."""

    name = "mmbench"

    def score(self, answers):
        right = [
            float(parse_choice(a.prediction, a.options, self.n_options) == a.references[0].strip().upper())
            for a in answers
        ]
        passes: dict[str, list[float]] = defaultdict(list)
        vanilla, category = {}, {}
        for a, r in zip(answers, right):
            cat, index, rotation = _fields(a)
            passes[index].append(r)
            category[index] = cat
            if rotation == "0":
                vanilla[index] = r
        circular = {i: min(marks) for i, marks in passes.items()}
        summary = {
            "score": 100 * sum(circular.values()) / len(circular),
            "vanilla": 100 * sum(vanilla.values()) / max(1, len(vanilla)),
        }
        for cat in sorted(set(category.values())):
            marks = [circular[i] for i in circular if category[i] == cat]
            summary[f"category/{cat}"] = 100 * sum(marks) / len(marks)
        return summary, right


class SEEDBenchAccuracy(MultipleChoiceAccuracy):
    """SEED-Bench (image): accuracy x 100 over the questions, and per evaluation dimension."""

    name = "seed_bench"

    def score(self, answers):
        summary, right = super().score(answers)
        by_dimension: dict[str, list[float]] = defaultdict(list)
        for a, r in zip(answers, right):
            by_dimension[_fields(a)[0]].append(r)
        for dimension, marks in sorted(by_dimension.items()):
            summary[f"dimension/{dimension}"] = 100 * sum(marks) / len(marks)
        return summary, right
