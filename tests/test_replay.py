"""Replay (data.replay): the mixing ratio in every batch, the order as a function of (seed, epoch), a
mid-epoch resume, the refusal of replay samples that are test samples, and runs that record it."""

import json
from dataclasses import replace

import pytest

from mllmft import api
from mllmft.data import Turn
from mllmft.data.replay import MixedBatches, refuse_test_overlap
from mllmft.errors import ConfigError, DataError
from mllmft.report import label
from tests.helpers.data_files import llava_dataset, llava_row
from tests.helpers.runs import UPSTREAM, resume_equals_whole


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize(
    "n_target, n_replay, batch, k, world", [(37, 5, 8, 2, 1), (40, 300, 6, 1, 2), (9, 4, 4, 3, 3), (10, 1, 4, 1, 3)]
)
def test_every_batch_holds_k_replay_samples_and_each_epoch_covers_the_target(n_target, n_replay, batch, k, world):
    ranks = [MixedBatches(n_target, n_replay, batch, k, world, r, seed=3) for r in range(world)]
    for epoch in range(3):
        per_rank = [_epoch(sampler, epoch) for sampler in ranks]
        assert all(len(b) == batch for mine in per_rank for b in mine[:-1])  # only a rank's last may be short
        batches = [b for mine in per_rank for b in mine]
        replay = [i for b in batches for i in b if i >= n_target]
        target = [i for b in batches for i in b if i < n_target]
        assert all(sum(i >= n_target for i in b) == k for b in batches)  # the share, batch by batch
        assert set(target) == set(range(n_target))  # one pass over the target (padded to equal shards)
        assert len(target) == world * -(-n_target // world)
        assert set(replay) <= set(range(n_target, n_target + n_replay))
        if len(replay) >= n_replay:  # the pool is cycled through, not sampled with repeats first
            assert set(replay) == set(range(n_target, n_target + n_replay))
    again = MixedBatches(n_target, n_replay, batch, k, world, 0, seed=3)
    assert _epoch(again, 1) == _epoch(ranks[0], 1)  # a function of (seed, epoch)
    assert _epoch(again, 1) != _epoch(again, 2)


def test_a_resumed_epoch_continues_with_the_uninterrupted_batches():
    whole = _epoch(MixedBatches(37, 5, 8, 2, 1, 0, seed=0), 4)
    resumed = MixedBatches(37, 5, 8, 2, 1, 0, seed=0)
    resumed.resume_at(4, 2)
    assert _epoch(resumed, 4) == whole[2:]
    assert _epoch(resumed, 4) == whole  # only the epoch that was interrupted skips


def test_replay_mixes_the_upstream_train_split_into_training_and_is_recorded(compose, tmp_path):
    from mllmft.run import run

    parts = api.build(compose("data.replay={ratio: 0.25}"))  # batch 4: 1 sample of the drawn skills, 3 digits
    batches = list(parts.datamodule.train_dataloader())
    assert all(sum(i.startswith(tuple(f"{s}-train-" for s in UPSTREAM)) for i in b["ids"]) == 1 for b in batches)
    assert all(sum(i.startswith("digits-") for i in b["ids"]) == len(b["ids"]) - 1 for b in batches)
    results = run(compose("data.replay={ratio: 0.25}", "zeroshot_test=false"))
    assert results["run"]["replay"] == {"ratio": 0.25, "sets": list(UPSTREAM), "split": "train"}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["run"]["replay"]["sets"] == list(UPSTREAM) and label(saved) == "full + replay"


def test_a_resumed_run_with_replay_ends_equal_to_an_uninterrupted_one(compose, tmp_path):
    # 2 target + 2 replay samples a batch: 4 steps an epoch, resumed mid-epoch 1
    common = ["trainer.max_steps=5", "data.target.sizes.train=8", "trainer.limit_val_batches=0"]
    resume_equals_whole(compose, [*common, "data.replay={ratio: 0.5}"], 3, tmp_path / "run")


@pytest.mark.parametrize(
    "replay, message",
    [
        ("{ratio: 0}", r"data.replay.ratio=0; expected a value in \(0, 1\)"),
        ("{ratio: 1.0}", r"data.replay.ratio=1.0; expected a value in \(0, 1\)"),
        ("{ratio: nan}", "data.replay.ratio=nan"),
        ("{ratio: 0.1}", r"data.replay.ratio=0.1 of data.batch_size=4 is 0.4 samples a batch"),
        ("{ratio: 0.5, sest: {}}", r"data.replay has unknown keys \['sest'\]"),
    ],
)
def test_bad_replay_settings_are_refused_before_the_model(compose, monkeypatch, replay, message):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the settings were refused")

    monkeypatch.setattr("mllmft.build.build_backbone", no_model)
    with pytest.raises(ConfigError, match=message):
        api.build(compose(f"data.replay={replay}"))


def test_replay_samples_that_are_test_samples_are_refused(tmp_path):
    """By id within a data set, and by content (the same image and conversation) in any test split."""
    source = llava_dataset(tmp_path, [llava_row(i) for i in range(3)])
    records = source.records("train")
    with pytest.raises(DataError, match="record 'r1' .* of 'custom' is also in its test split"):
        refuse_test_overlap({"custom": records}, {"custom": records[1:2]})
    renamed = [replace(r, id=f"other-{r.id}") for r in records]
    with pytest.raises(DataError, match="has the same images and prompt as record 'r0' .* of the 'digits' test split"):
        refuse_test_overlap({"custom": renamed}, {"digits": records[:1]})
    (tmp_path / "b").mkdir()
    other_answer = llava_dataset(tmp_path / "b", [llava_row(i, answer="blue") for i in range(3)]).records("train")
    with pytest.raises(DataError, match="same images and prompt"):  # the test's question, another answer
        refuse_test_overlap({"custom": other_answer}, {"digits": records})
    other_question = [replace(r, turns=(Turn("user", "<image>\nShape?"), r.turns[1])) for r in other_answer]
    refuse_test_overlap({"custom": other_question}, {"digits": records})  # another question: no overlap


def test_replay_with_an_objective_rewarded_by_the_target_metric_is_refused(compose):
    with pytest.raises(ConfigError, match="objective=grpo scores its sampled answers with the target set's metric"):
        api.build(compose("data.replay={ratio: 0.5}", "objective=grpo"))
