"""The console entry points as a user runs them (subprocesses: each pays ~8 s of imports)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers.runs import FAST, SMALL_LLAVA, UPSTREAM

# 4 new tokens: a random model never stops early, and under FSDP2/ZeRO-3 each token gathers every layer
FAST = [*FAST, *SMALL_LLAVA, "module.max_new_tokens=4"]

BIN = Path(sys.executable).parent
PRETRAIN = [
    "+model.pretrain.source.sizes={train: 16, test: 8}",
    "model.pretrain.max_steps=3",
    "model.pretrain.batch_size=4",
]


def _run(args, tmp_path, timeout=300):
    env = {**os.environ, "MLLMFT_CACHE": str(tmp_path / "cache"), "MLLMFT_ROOT": str(tmp_path)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)


def test_main_job_pretrains_fine_tunes_and_prints_the_table(tmp_path):
    overrides = [o for o in FAST if not o.startswith(("model.pretrain", "zeroshot_test", "print_config"))]
    proc = _run([BIN / "mllmft-train", *overrides, *PRETRAIN, "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "zero-shot" in out and "fine-tuned" in out and "digits (target)" in out and "shapes" in out
    assert "model" in out and "strategy" in out  # the resolved config, printed at start
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["pretrain"]["steps"] == 3 and "E" in results["tradeoff"]["final"]
    assert list((tmp_path / "cache" / "pretrained").glob("llava-*/model.safetensors"))


@pytest.mark.slow  # the launcher that re-runs the command per rank: the sharded jobs below; DDP: test_engines
def test_real_ddp_launcher_two_cpu_processes(tmp_path):
    proc = _run([sys.executable, "-m", "mllmft.train", *FAST, "hardware=ddp_cpu", "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()
    assert (tmp_path / "run" / "train_ddp_process_1.log").is_file()  # the second rank ran


@pytest.mark.slow  # -m sweeps in make test: the Optuna search and the merge sweep below
def test_multirun_sweep(tmp_path):
    proc = _run(
        [BIN / "mllmft-train", "-m", *FAST, "strategy=full,zeroshot", "seed=1,2", "hydra.sweep.dir=sweep"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(runs) == 4
    strategies = sorted(json.loads(r.read_text())["run"]["strategy"] for r in runs)
    assert strategies == ["full", "full", "zeroshot", "zeroshot"]


def test_optuna_search_maximises_h_over_the_strategy_knobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = _run(
        [
            BIN / "mllmft-train",
            "hparams_search=l2_sp_optuna",
            "hydra.sweeper.n_trials=2",
            *FAST,
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(trials) == 2
    configs = [json.loads(t.read_text())["config"] for t in trials]
    assert all(c["strategy"]["_target_"].endswith("AnchorPenalty") for c in configs)
    assert len({c["strategy"]["lam"] for c in configs}) == 2 and all(1e-5 <= c["strategy"]["lam"] <= 1 for c in configs)
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_params" in best and "strategy.lam" in best and "module.lr" in best


def test_eval_entry_point_on_an_exported_checkpoint(tmp_path, tiny_backbone):
    tiny_backbone.model.save_pretrained(tmp_path / "export")
    tiny_backbone.processor.save_pretrained(tmp_path / "export")
    proc = _run([BIN / "mllmft-eval", *FAST, f"model.checkpoint={tmp_path / 'export'}", "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["run"]["strategy"] == "zeroshot" and results["run"]["backbone_source"].endswith("export")


def test_merge_sweep_from_a_training_checkpoint_spans_the_two_runs(tmp_path):
    """The WiSE-FT sweep of the issue on a run directory with only checkpoints/last.ckpt: α = 0 scores
    as the base model and α = 1 as the fine-tuned one, set by set; no ``finetuned``: one line, exit 2.
    The training run is in-process (the train command has its own tests); the sweep is the command."""
    from mllmft import api
    from mllmft.run import run

    checkpoints = ["callbacks=default", "~callbacks.rich_progress_bar", "~callbacks.lr_monitor"]  # no logger here
    overrides = [*FAST, *checkpoints, "trainer.max_steps=3", "module.lr=1e-2", "zeroshot_test=true"]
    trained = run(api.compose(overrides, output_dir=tmp_path / "run"))
    proc = _run(
        [
            BIN / "mllmft-merge",
            "-m",
            *FAST,
            "merge=wise_ft",
            "merge.alpha=0,1",
            f"finetuned={tmp_path / 'run'}",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = {
        json.loads(r.read_text())["run"]["merge"]["alpha"]: json.loads(r.read_text())
        for r in (tmp_path / "sweep").glob("*/results.json")
    }
    assert set(merged) == {0, 1}
    assert merged[1]["run"]["merge"]["finetuned"].endswith("last.ckpt")
    assert merged[0]["scores"]["final"] == trained["scores"]["zeroshot"]
    assert merged[1]["scores"]["final"] == trained["scores"]["final"]
    missing = _run([BIN / "mllmft-merge", *FAST, "hydra.run.dir=none"], tmp_path)
    assert missing.returncode == 2 and "finetuned" in missing.stderr and "Traceback" not in missing.stderr


# the data errors' messages are tested in-process (test_data, test_fuzz); here the console's exit 2 and one line
@pytest.mark.parametrize(
    "case",
    [
        "unknown_strategy",
        pytest.param("missing_image", marks=pytest.mark.slow),
        pytest.param("empty_answer", marks=pytest.mark.slow),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, case):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "ok.png")
    rows = [
        {
            "id": "a1",
            "image": "ok.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}],
        }
    ]
    if case == "missing_image":
        rows.append({**rows[0], "id": "b2", "image": "missing.png"})
        expected = "record 'b2'"
    elif case == "empty_answer":
        rows.append(
            {
                "id": "c3",
                "image": "ok.png",
                "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": ""}],
            }
        )
        expected = "record 'c3'"
    (tmp_path / "d.json").write_text(json.dumps(rows))
    data = [
        "data=llava_json",
        f"data.target.image_root={tmp_path}",
        *(f"data.target.{s}={tmp_path / 'd.json'}" for s in ("train", "val", "test")),
    ]
    args = [*FAST, "strategy=nope"] if case == "unknown_strategy" else [*FAST, *data]
    proc = _run([BIN / "mllmft-train", *args], tmp_path)
    assert proc.returncode != 0
    if case == "unknown_strategy":
        assert "Could not find 'strategy/nope'" in proc.stderr and "zeroshot" in proc.stderr
    else:
        assert f"mllmft: error: {expected}" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "hardware, strategy",
    # the peft export gathered from FSDP2 shards: slow (the same gather as spider's, then peft's merge)
    [
        ("fsdp2_cpu", "spider"),
        pytest.param("fsdp2_cpu", "lora", marks=pytest.mark.slow),
        ("deepspeed_zero3_cpu", "spider"),
    ],
)
def test_main_job_under_sharded_engines_with_a_merged_export(compose, tmp_path, hardware, strategy):
    """The whole job on 2 processes (the launcher re-runs the command per rank): zero-shot test, fit,
    test, results.json from rank 0, and an export gathered from the shards that plain transformers loads."""
    from transformers import AutoModelForImageTextToText

    from mllmft import api

    proc = _run(
        [
            sys.executable,
            "-m",
            "mllmft.train",
            *FAST,
            f"hardware={hardware}",
            f"strategy={strategy}",
            "scope=connector_llm",
            "trainer.max_steps=3",
            "zeroshot_test=true",
            "trainer.num_sanity_val_steps=1",  # the default: it once left FSDP2's root unit gathered
            "export=merged",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["global_steps"] == 3 and set(results["scores"]["final"]) == {"digits", *UPSTREAM}
    assert {"E", "F", "O"} <= set(results["tradeoff"]["final"])
    exported = dict(AutoModelForImageTextToText.from_pretrained(results["export"]).named_parameters())
    base = dict(api.build(compose("scope=connector_llm")).backbone.model.named_parameters())  # same seed: θ0
    assert set(exported) == set(base)
    moved = [n for n in base if not torch.equal(exported[n], base[n])]
    assert moved and all(not n.startswith("model.vision_tower.") for n in moved)  # the scope: connector + LLM


def test_a_bad_strategy_knob_exits_2_with_one_line(tmp_path):
    """A bad strategy knob (raised inside Hydra's instantiate): exit 2, one line, no traceback."""
    proc = _run([BIN / "mllmft-train", *FAST, "strategy=spider", "strategy.mask=foo", "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "mllmft: error: strategy.mask='foo'; expected one of ('soft', 'binary')"
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # the record errors' messages: test_bad_input (in-process); the console's exit 2: above
def test_bad_data_exits_2_with_one_line_before_anything_is_evaluated(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "img.png")
    rows = [
        {
            "id": "a",
            "image": "img.png",
            "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}],
        }
    ]
    (tmp_path / "data.jsonl").write_text(json.dumps(rows[0]) + "\n" + '{"id": "b", "image": null}\n')
    proc = _run(
        [
            BIN / "mllmft-train",
            *FAST,
            "data=llava_json",
            f"data.target.image_root={tmp_path}",
            *(f"data.target.{s}={tmp_path / 'data.jsonl'}" for s in ("train", "val", "test")),
            "data.num_workers=2",
            "hydra.run.dir=run2",
        ],
        tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        "data.jsonl:2): 'image' must be a file path or a list of them, got null" in proc.stderr.strip().splitlines()[-1]
    )
    assert not (tmp_path / "run2" / "predictions").exists()  # refused before the zero-shot test
