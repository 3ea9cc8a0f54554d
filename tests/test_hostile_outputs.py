"""What a run leaves behind, under hostile conditions: a full disk while saving a checkpoint or an
export, a second run into the same directory, a fine-tuned model of another base given to
mllmft-merge, malformed results.json files given to mllmft-report. Each ends in a correct result or
one line naming what is wrong and what was kept; never a lost checkpoint, a half export, a silent
wrong merge, a traceback."""

from __future__ import annotations

import builtins
import copy
import errno
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from mllmft import api
from mllmft.checkpoint_match import read_checkpoint
from mllmft.cli import user_error_message
from mllmft.errors import ConfigError, StorageError
from mllmft.merges import FinetunedWeights
from mllmft.report import load_runs, main, summarise
from mllmft.run import run
from mllmft.run_lock import LOCK_NAME, run_directory_lock
from tests.helpers.runs import CKPT, FAST, SMALL_LLAVA


# --- a disk that fills up ------------------------------------------------------------------------------
class FillingDisk:
    """Files opened for writing under ``directory`` take ``room`` more bytes (None: no limit), then
    fail with ENOSPC; a rename into ``directory`` from elsewhere fails with EXDEV (another filesystem,
    as $TMPDIR often is), which makes shutil.move a copy over the target."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.room: int | None = None

    def holds(self, path) -> bool:
        return Path(os.fspath(path)).resolve().is_relative_to(self.directory.resolve())

    def take(self, size: int) -> int:
        if self.room is None:
            return size
        taken = min(size, self.room)
        self.room -= taken
        return taken


class _FillingFile:
    def __init__(self, file, disk: FillingDisk):
        self._file, self._disk = file, disk

    def write(self, data) -> int:
        data = bytes(data)
        taken = self._disk.take(len(data))
        self._file.write(data[:taken])
        if taken < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return taken

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def __getattr__(self, name):
        return getattr(self._file, name)


@pytest.fixture
def filling_disk(tmp_path, monkeypatch):
    disk = FillingDisk(tmp_path / "run" / "checkpoints")
    real_open, real_rename = builtins.open, os.rename

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax+")
        return _FillingFile(handle, disk) if writing and disk.holds(file) else handle

    def rename(src, dst, *args, **kwargs):
        if disk.holds(dst) and not disk.holds(src):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies through Python writes, as elsewhere
    return disk


class FillDiskAt(L.Callback):
    """The disk has ``room`` bytes left once ``step`` steps are done (before that step's checkpoint)."""

    def __init__(self, disk: FillingDisk, step: int, room: int = 1000):
        self.disk, self.step, self.room = disk, step, room

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            self.disk.room = self.room


def test_a_checkpoint_save_that_fills_the_disk_keeps_the_last_good_checkpoint(compose, tmp_path, filling_disk):
    parts = api.build(compose(CKPT, "trainer.max_steps=3"))
    parts.trainer.callbacks.insert(0, FillDiskAt(filling_disk, step=2))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(StorageError) as info:
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    line = user_error_message(info.value)
    assert line == (
        f"could not write the checkpoint {last} ({os.strerror(errno.ENOSPC)}); the previous last.ckpt is kept unchanged"
    )
    filling_disk.room = None
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 1  # whole, and loadable
    assert read_checkpoint(last)["mllmft"]["strategy"] == "full"
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary left


class _OneRank:
    """What save_directory_whole asks of a Lightning strategy, for one process."""

    is_global_zero = True

    def barrier(self) -> None:
        pass

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision


def test_a_sharded_checkpoint_save_that_fails_keeps_the_previous_directory(tmp_path):
    """FSDP2's distributed and DeepSpeed's checkpoints are directories each rank writes its part of:
    written beside the old one and swapped in whole (Lightning's own saves write into it file by file)."""
    from mllmft.engines import save_directory_whole

    last = tmp_path / "last.ckpt"

    def save(parts: int, fail_after: int | None = None):
        def write(directory: Path) -> None:
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(parts):
                if i == fail_after:
                    raise OSError(errno.ENOSPC, "No space left on device")
                (directory / f"shard{i}").write_text(f"step {parts}")

        return write

    def nothing(directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)

    save_directory_whole(_OneRank(), last, nothing, save(2))
    with pytest.raises(StorageError, match=r"last.ckpt \(No space left on device\); the previous last.ckpt is kept"):
        save_directory_whole(_OneRank(), last, nothing, save(3, fail_after=1))
    with pytest.raises(StorageError, match="the previous last.ckpt is kept"):  # this rank's own state
        save_directory_whole(_OneRank(), last, save(1, fail_after=0), save(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind
    assert [(last / f"shard{i}").read_text() for i in range(2)] == ["step 2", "step 2"]
    save_directory_whole(_OneRank(), last, nothing, save(3))
    assert sorted(p.name for p in last.iterdir()) == ["shard0", "shard1", "shard2"]


def test_the_last_checkpoint_holds_the_weights_the_run_scores(compose, tmp_path):
    """3 steps, a checkpoint every 2: last.ckpt is saved again at the end, at step 3."""
    every_2 = CKPT.replace("every_n_train_steps: 1", "every_n_train_steps: 2")
    parts = api.build(compose(every_2, "trainer.max_steps=3"))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    trained = {f"model.{n}": p for n, p in parts.module.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(saved["state_dict"][n], trained[n].detach()) for n in trained)


def test_resuming_a_finished_checkpoint_into_its_own_directory_records_its_steps(compose, tmp_path):
    first = run(compose(CKPT))
    assert first["global_steps"] == 2 and not (tmp_path / "run" / LOCK_NAME).exists()  # released at the end
    resumed = run(compose(CKPT, f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"))
    assert resumed["global_steps"] == 2
    assert json.loads((tmp_path / "run" / "results.json").read_text())["global_steps"] == 2


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["trainer.max_steps=0"], "trainer.max_steps=0"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0"),
        (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0"),
        (["trainer.max_steps=-1", "trainer.max_epochs=-1"], "trainer.max_steps=-1 with trainer.max_epochs=-1"),
    ],
)
def test_a_training_run_that_trains_nothing_is_refused_at_start_up(compose, overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        api.build(compose(*overrides))
    api.build(compose("strategy=zeroshot", *overrides))  # evaluating only needs no step


# --- one run per run directory --------------------------------------------------------------------------
@pytest.fixture
def live_pid():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def _lock(directory: Path, pid: int) -> Path:
    import socket

    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))
    return lock


def test_a_second_run_into_a_busy_run_directory_is_refused_before_anything(compose, tmp_path, live_pid):
    lock = _lock(tmp_path / "run", live_pid)
    with pytest.raises(ConfigError) as info:
        run(compose())
    line = user_error_message(info.value)
    assert line.startswith(f"the run directory {tmp_path / 'run'} is in use by another run (pid {live_pid} on ")
    assert f"delete {lock}" in line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]  # nothing written
    assert json.loads(lock.read_text())["pid"] == live_pid  # the live run's lock is left alone


def test_a_dead_runs_lock_is_taken_over_and_other_ranks_take_none(tmp_path, monkeypatch, live_pid):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = _lock(tmp_path / "run", dead.pid)
    with run_directory_lock(tmp_path / "run"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock = _lock(tmp_path / "run", live_pid)
    for variable in ("LOCAL_RANK", "RANK"):  # a rank of the live run itself (Lightning's launcher, torchrun)
        monkeypatch.setenv(variable, "1")
        with run_directory_lock(tmp_path / "run"):
            assert json.loads(lock.read_text())["pid"] == live_pid
        monkeypatch.delenv(variable)
    with pytest.raises(ConfigError, match="in use by another run"):
        with run_directory_lock(tmp_path / "run"):
            pass


# --- exports and merges ---------------------------------------------------------------------------------
def _compose(out: Path, *overrides: str, config_name: str = "train", run_dir: str = "run"):
    return api.compose(
        [*FAST, *SMALL_LLAVA, f"paths.cache_dir={out / 'cache'}", *overrides],
        config_name=config_name,
        output_dir=out / run_dir,
    )


def _safetensors_disk_full(*args, **kwargs):
    from safetensors import SafetensorError

    Path(args[1]).write_bytes(b"\0" * 100)  # a file begun, as a full disk leaves it
    raise SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short runs with a checkpoint: ``cut``, whose export=merged met a full disk; ``other``, from
    other base weights (model.tiny.seed=1), exported."""
    out = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("transformers.modeling_utils.safe_save_file", _safetensors_disk_full)
        with pytest.raises(StorageError) as info:
            run(_compose(out, CKPT, "export=merged", run_dir="cut"))
    run(_compose(out, CKPT, "export=merged", "++model.tiny.seed=1", run_dir="other"))
    return {"out": out, "cut_error": info.value}


def test_an_export_that_fills_the_disk_leaves_no_export_and_the_results_whole(runs):
    cut = runs["out"] / "cut"
    assert user_error_message(runs["cut_error"]) == (
        f"could not write export=merged {cut / 'export'} (Error while serializing: IoError(Os {{ code: 28, kind: "
        'StorageFull, message: "No space left on device" })); no export was written'
    )
    assert not (cut / "export").exists() and not (cut / ".export.tmp").exists()
    results = json.loads((cut / "results.json").read_text())
    assert results["status"] == "complete" and "export" not in results


def test_merge_passes_over_an_incomplete_export_for_the_runs_checkpoint(runs, caplog):
    out = runs["out"]
    run_dir = out / "incomplete"
    shutil.copytree(out / "cut", run_dir)
    (run_dir / "export").mkdir()
    (run_dir / "export" / "config.json").write_text(json.dumps({"model_type": "llava"}))  # as a cut save left it
    parts = api.build(_compose(out, run_dir="base"))
    with caplog.at_level(logging.WARNING, logger="mllmft.merges.base"):
        weights = FinetunedWeights.open(run_dir, parts.backbone, parts.module.run_identity)
    assert weights.source == str(run_dir / "checkpoints" / "last.ckpt") and weights.strategy == "full"
    assert "its export/ is incomplete (config.json but no weights" in caplog.text
    with pytest.raises(ConfigError, match=r"finetuned=.*export is an incomplete HF directory: config.json but no"):
        FinetunedWeights.open(run_dir / "export", parts.backbone, parts.module.run_identity)


def _merge(out: Path, *overrides: str, run_dir: str = "merged"):
    return _compose(out, "zeroshot_test=true", *overrides, config_name="merge", run_dir=run_dir)


def _no_evaluation(monkeypatch):
    def test(*args, **kwargs):
        raise AssertionError("evaluated before the merge's input was checked")

    monkeypatch.setattr(L.Trainer, "test", test)


def _refused(cfg) -> str:
    with pytest.raises(Exception) as info:
        run(cfg)
    line = user_error_message(info.value)
    assert line is not None and "\n" not in line, info.value
    assert not Path(cfg.paths.output_dir, "results.json").exists()
    return line


@pytest.mark.parametrize(
    "finetuned, message",
    [
        ("other/export", r"^finetuned=\S+/other/export was fine-tuned from other base weights: tiny \(random\)"),
        ("other", r"^finetuned=\S+/other/export was fine-tuned from other base weights"),
        ("other/checkpoints/last.ckpt", r"^finetuned=\S+/last.ckpt was trained from other base weights"),
        ("nowhere", r"^finetuned=\S+/nowhere: no such file or directory$"),
        ("cut/results.json", r"^finetuned=\S+/results.json is not a readable checkpoint"),
    ],
)
def test_a_bad_finetuned_is_refused_before_any_evaluation_naming_finetuned(runs, monkeypatch, finetuned, message):
    _no_evaluation(monkeypatch)
    line = _refused(_merge(runs["out"], f"finetuned={runs['out'] / finetuned}"))
    assert re.search(message, line), line


def test_an_hf_directory_of_a_smaller_model_is_refused(runs, monkeypatch):
    """No record of a run: its model type, then every tensor's name and shape, against the base."""
    from mllmft.backbones import build_tiny

    smaller = runs["out"] / "smaller"
    backbone = build_tiny("llava", {**_compose(runs["out"]).model.tiny, "text_layers": 2})
    backbone.model.save_pretrained(smaller)
    backbone.processor.save_pretrained(smaller)
    _no_evaluation(monkeypatch)
    line = _refused(_merge(runs["out"], f"finetuned={smaller}"))
    assert re.search(r"^finetuned=\S+/smaller lacks \d+ tensors of this model \(e.g. \[", line), line


@pytest.mark.parametrize(
    "knobs, message",
    [
        (["merge.alpha=2"], r"^merge.alpha=2; expected a value in \[0, 1\]$"),
        (["merge=dare", "merge.seed=-3"], r"^merge.seed=-3; expected an integer"),
        (["merge=grafting", "merge.steps=1.5"], r"^merge.steps=1.5; expected an integer"),
        (["merge=model_tailor", "merge.damp=0"], r"^merge.damp=0; expected a value > 0$"),
    ],
)
def test_merge_knobs_are_refused_before_any_evaluation(runs, monkeypatch, knobs, message):
    _no_evaluation(monkeypatch)
    line = _refused(_merge(runs["out"], f"finetuned={runs['out'] / 'cut'}", *knobs))
    assert re.search(message, line), line


def test_non_finite_finetuned_weights_are_refused(runs):
    parts = api.build(_compose(runs["out"], run_dir="base"))
    checkpoint = torch.load(runs["out"] / "cut" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name][0] = float("nan")
    torch.save(checkpoint, runs["out"] / "diverged.ckpt")
    with pytest.raises(ConfigError, match=rf"finetuned=\S+diverged.ckpt: {name[len('model.') :]} holds NaN"):
        FinetunedWeights.open(runs["out"] / "diverged.ckpt", parts.backbone, parts.module.run_identity)


# --- mllmft-report on malformed results.json ------------------------------------------------------------
def _valid_results(seed: int = 1, s_t: float = 60.0) -> dict:
    """A results.json as mllmft-train writes it (the fields the report reads, and some it does not)."""
    final = {"S_t": s_t, "S_u": 20.0, "H": 30.0, "E": 10.0, "F": -70.0, "O": -60.0}
    return {
        "schema": "mllmft.results/3",
        "status": "complete",
        "run": {
            "model": "tiny_llava",
            "family": "llava",
            "strategy": "full",
            "scope": {"llm": {"train": True}},
            "seed": seed,
            "merge": {"method": "wise_ft", "alpha": 0.5, "finetuned": "/runs/full", "finetuned_strategy": "full"},
        },
        "metrics": {"digits": {"name": "exact_match"}, "shapes": {"name": "exact_match"}},
        "target": "digits",
        "upstream": ["shapes"],
        "scores": {"zeroshot": {"digits": 50.0, "shapes": 90.0}, "final": {"digits": s_t, "shapes": 20.0}},
        "samples": {"digits": 8, "shapes": 8},
        "tradeoff": {"zeroshot": {"S_t": 50.0, "S_u": 90.0, "H": 64.3}, "final": final},
        "global_steps": 2,
        "config": {"seed": seed, "module": {"lr": 0.001, "betas": [0.9, 0.999]}, "merge": {"alpha": 0.5}},
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(run="full"), r"run is a string \"full\"; expected an object"),
        (lambda r: r.update(upstream=None), r"upstream is null; expected an array"),
        (lambda r: r["run"].update(seed=[1, 2]), r"run.seed is an array \[1, 2\]; expected an integer or a string"),
        (lambda r: r["tradeoff"]["final"].update(S_t="NaN"), r"tradeoff.final.S_t is a string \"NaN\"; expected a"),
        (lambda r: r["tradeoff"]["final"].update(H=float("nan")), r"tradeoff.final.H is a number NaN; expected a"),
        (lambda r: r["scores"].update(final={"digits": {}}), r"scores.final.digits is an object \{\}; expected a"),
        (lambda r: r.pop("target"), r"no 'target'"),
        (lambda r: r["run"].update(merge={"method": 5}), r"run.merge.method is a number 5; expected a string"),
    ],
)
def test_a_malformed_results_file_is_skipped_naming_what_is_wrong(tmp_path, capsys, change, message):
    bad = _valid_results()
    change(bad)
    for name, results in (("good", _valid_results()), ("bad", bad)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "results.json").write_text(json.dumps(_valid_results())[:300])
    main([str(tmp_path)])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("mllmft-report: warning: skipped ") for line in err), err
    assert re.search(rf"skipped {tmp_path / 'bad' / 'results.json'}: {message}", err[0]), err[0]
    assert f"skipped {tmp_path / 'cut' / 'results.json'}: " in err[1]


ODD_VALUES = [
    None,
    "NaN",
    "",
    "[/red]",
    "$x^$",
    [],
    {},
    [None],
    [1, "a"],
    {"a": 1},
    0,
    -1,
    1.5,
    True,
    float("nan"),
    float("inf"),
    10**400,
    "x" * 300,
    json.loads("[" * 200 + "]" * 200),
]


def _paths(value, path=()):
    """Every path into ``value`` (the root included)."""
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, (*path, key))


def _mutated(rng: random.Random) -> str:
    """A valid results.json changed at one or two random places: a wrong type, a null, a missing key, a
    non-finite number, a truncated text."""
    results = _valid_results(seed=rng.randrange(3), s_t=float(rng.randrange(100)))
    for _ in range(rng.choice((1, 1, 2))):
        path = rng.choice(list(_paths(results)))
        if not path:
            results = rng.choice(ODD_VALUES)
            break
        parent = results
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.3:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    text = json.dumps(results)  # NaN and Infinity as JavaScript literals: Python's json reads them back
    return text[: rng.randrange(len(text))] if rng.random() < 0.1 else text


def test_report_fuzz_each_file_is_reported_correctly_or_skipped(tmp_path, capsys):
    rng = random.Random(0)
    files = []
    for i in range(300):
        files.append(tmp_path / f"{i:03d}" / "results.json")
        files[-1].parent.mkdir()
        files[-1].write_text(_mutated(rng))
    runs, skipped = load_runs(files)
    skipped_files = {line.split(": ", 1)[0] for line in skipped}
    assert len(runs) + len(skipped) == len(files) and len(skipped_files) == len(skipped)
    assert 50 < len(skipped) < 290  # the mutations hit both what the report reads and what it does not
    for results in runs:  # each usable file alone: its own numbers, in a row of its own
        [row], _, _ = summarise([results])
        final = results["tradeoff"]["final"]
        for column in ("S_t", "S_u", "H"):
            assert row.get(column) == final.get(column), column
        assert row["target"] == results["target"] and row["upstream"] == ",".join(results["upstream"])
    main([str(tmp_path), "--csv", str(tmp_path / "table.csv")])
    captured = capsys.readouterr()
    assert captured.err.count("mllmft-report: warning: skipped") == len(skipped)
    assert (tmp_path / "table.csv").read_text().count("\n") >= 2


def test_report_outputs_survive_odd_names_and_refuse_an_unwritable_place(tmp_path, capsys):
    odd = _valid_results()
    odd["run"]["model"], odd["target"] = "$x^$ [/red]", "a/b"
    odd["tradeoff"]["zeroshot"]["S_u"] = None
    (tmp_path / "runs" / "odd").mkdir(parents=True)
    (tmp_path / "runs" / "odd" / "results.json").write_text(json.dumps(odd))
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert (tmp_path / "report" / "tradeoff.png").is_file() and "$x^$ [/red]" in capsys.readouterr().out
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"^mllmft-report: error: cannot write \S+file"):
        main([str(tmp_path / "runs"), "--csv", str(tmp_path / "file" / "table.csv")])
