"""POPE, MME, MMBench and SEED-Bench: their published layouts read from fixtures, their scoring rules
against values derived by hand, and the +upstream=general preset in a run."""

from __future__ import annotations

import pytest

from mllmft.data import MME, POPE, MMBench, SEEDBench
from mllmft.metrics import build_metric
from mllmft.run import run
from tests.helpers.data_files import write_general_benchmarks
from tests.helpers.runs import UPSTREAM


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_general_benchmarks(tmp_path_factory.mktemp("general"))


def _score(metric_name: str, records, predictions: list[str]) -> dict:
    metric = build_metric(metric_name)
    metric.update(
        list(range(len(records))),
        [r.id for r in records],
        [""] * len(records),
        predictions,
        [r.answers for r in records],
        [r.options for r in records],
    )
    return metric.compute()


def test_pope_scores_by_its_rule(data_dir):
    """truth y y n n y n; parsed y n n y n n (first sentence, "not" is no): TP 1, FP 1, FN 2, TN 2."""
    records = POPE(
        "pope",
        str(data_dir / "pope"),
        {"test": "coco_pope_adversarial.json"},
        image_root=str(data_dir / "coco" / "val2014"),
    ).records("test")
    assert [r.answers[0] for r in records] == ["yes", "yes", "no", "no", "yes", "no"]
    scores = _score("pope", records, ["Yes, there is.", "No.", "no", "Yes", "There is not a dog", "No"])
    assert scores["precision"] == pytest.approx(50.0) and scores["recall"] == pytest.approx(100 / 3)
    assert scores["score"] == pytest.approx(40.0)  # F1 = 2 · (1/2 · 1/3) / (1/2 + 1/3)
    assert scores["accuracy"] == pytest.approx(50.0) and scores["yes_ratio"] == pytest.approx(100 / 3)


def test_mme_scores_acc_plus_acc_plus_per_subtask(data_dir):
    """existence: a right twice, b once: acc 75, acc+ 50 → 125; code_reasoning 100 + 100 → 200; artwork
    ("Maybe" is neither yes nor no): 50 + 0 → 50. Perception 175, cognition 200, headline 375 / 6."""
    records = MME("mme", str(data_dir / "MME_Benchmark_release_version"), {"test": "."}).records("test")
    assert len(records) == 8 and {r.id.split("|")[0] for r in records} == {"existence", "code_reasoning", "artwork"}
    by_id = {
        "existence|a.png|0": "Yes",
        "existence|a.png|1": "No",
        "existence|b.png|0": "Yes",
        "existence|b.png|1": "Yes",
        "code_reasoning|c.png|0": "yes it is",
        "code_reasoning|c.png|1": "No",
        "artwork|d.jpg|0": "Maybe",
        "artwork|d.jpg|1": "no",
    }
    scores = _score("mme", records, [by_id[r.id] for r in records])
    assert (scores["existence/acc"], scores["existence/acc_plus"], scores["existence"]) == (75.0, 50.0, 125.0)
    assert scores["code_reasoning"] == 200.0 and scores["artwork"] == 50.0
    assert (scores["perception"], scores["cognition"]) == (175.0, 200.0)
    assert scores["score"] == pytest.approx(62.5)


def test_mmbench_asks_every_rotation_and_scores_circularly(data_dir):
    records = MMBench("mmbench_en", str(data_dir / "mmbench"), {"test": "MMBench_DEV_EN.tsv"}).records("test")
    assert [r.id for r in records] == [
        "attribute|10|0",
        "attribute|10|1",
        "attribute|10|2",
        "attribute|10|3",
        "logic|11|0",
        "logic|11|1",
    ]
    assert [r.answers[0] for r in records] == ["B", "A", "D", "C", "A", "B"]  # "dog" and "yes", rotated
    assert records[1].options == ("dog", "bird", "fish", "cat")
    assert "Look.\nIs it?\nA. no\nB. yes" in records[5].turns[0].text
    assert records[4].load_images()[0].getpixel((0, 0)) == (0, 0, 0)  # question 11 shares question 10's image
    # 10 right in every rotation; 11 right unrotated, wrong rotated: circular 50, vanilla 100
    scores = _score("mmbench", records, ["B", "A", "(D)", "C. dog", "A", "A"])
    assert (scores["score"], scores["vanilla"]) == (50.0, 100.0)
    assert (scores["category/attribute"], scores["category/logic"]) == (100.0, 0.0)
    chinese = MMBench("mmbench_cn", str(data_dir / "mmbench"), {"test": "MMBench_DEV_CN.tsv"}, lang="cn")
    assert chinese.records("test")[0].turns[0].text.endswith("请直接回答选项字母。")


def test_seed_bench_reads_image_questions_and_scores_per_dimension(data_dir):
    records = SEEDBench(
        "seed_bench",
        str(data_dir / "seed_bench"),
        {"test": "SEED-Bench.json"},
        image_root=str(data_dir / "seed_bench" / "SEED-Bench-image"),
    ).records("test")
    assert [r.id for r in records] == ["Scene Understanding|q0", "Instance Identity|q1", "Scene Understanding|q2"]
    scores = _score("seed_bench", records, ["A", "B", "The answer is B"])
    assert scores["score"] == pytest.approx(200 / 3)
    assert (scores["dimension/Scene Understanding"], scores["dimension/Instance Identity"]) == (100.0, 0.0)


def test_question_limits_keep_whole_groups(data_dir):
    mmbench = MMBench("m", str(data_dir / "mmbench"), {"test": "MMBench_DEV_EN.tsv"}, sizes={"test": 1})
    assert [r.id for r in mmbench.records("test")] == [f"attribute|10|{k}" for k in range(4)]
    mme = MME("mme", str(data_dir / "MME_Benchmark_release_version"), {"test": "."}, sizes={"test": 2})
    assert len(mme.records("test")) == 4  # two images, both questions each


def test_the_general_preset_scores_every_benchmark_in_a_run(compose, data_dir, tmp_path):
    results = run(compose(f"paths.data_dir={data_dir}", "+upstream=general", "zeroshot_test=true"))
    assert results["upstream"] == [*UPSTREAM, "mmbench_en", "mmbench_cn", "mme", "pope", "seed_bench"]
    for phase in ("zeroshot", "final"):
        assert set(results["scores"][phase]) == {"digits", *results["upstream"]}
    details = results["details"]["final"]
    assert {"perception", "cognition", "existence/acc_plus"} <= set(details["mme"])
    assert {"vanilla", "category/logic"} <= set(details["mmbench_en"]) and "yes_ratio" in details["pope"]
    for name in results["upstream"][1:]:
        assert (tmp_path / "run" / "predictions" / f"final-{name}.jsonl").is_file()
