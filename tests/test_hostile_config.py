"""Hostile settings (NaN knobs, zeros Lightning divides by, seeds numpy refuses, bad regexes, unsafe or
exploding YAML, directories that cannot be written) are refused at start-up with one line naming the key
and what it may be: before any model is built, never a library's traceback, a hang or a silent run."""

import copy
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mllmft import api
from mllmft.chat import answer
from mllmft.cli import RunDirectoryCheck, user_error_message
from mllmft.config import CONF_DIR
from mllmft.errors import ConfigError
from mllmft.pretrain import pretrained_tiny
from tests.helpers.runs import NO_UPSTREAM, TINY

BIN = Path(sys.executable).parent
STRATEGIES = sorted(p.stem for p in (CONF_DIR / "strategy").glob("*.yaml"))


def _config_error(err: BaseException) -> ConfigError | None:
    """The ConfigError behind ``err`` (Hydra wraps a strategy's own in an InstantiationException)."""
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__ or err.__context__
    return err


def _refusal(compose, monkeypatch, *overrides: str, **kwargs) -> str:
    """The one line the entry points print for a run of ``overrides`` that must be refused before its
    model is built."""

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the settings were refused")

    monkeypatch.setattr("mllmft.build.build_backbone", no_model)
    with pytest.raises(Exception) as caught:
        api.build(compose(*overrides, **kwargs))
    assert _config_error(caught.value) is not None, f"not a ConfigError: {caught.value!r}"
    message = user_error_message(caught.value)
    assert message is not None and "\n" not in message
    return message


# --- 1. every numeric knob of every strategy ----------------------------------------------------------


def _numeric_knobs(node, path=()):
    """Paths to every number (not a bool) in a plain config, through nested strategies and lists."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numeric_knobs(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numeric_knobs(value, (*path, i))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path


def _with(plain: dict, path: tuple, value) -> dict:
    changed = copy.deepcopy(plain)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_numeric_strategy_knob_refuses_nan_and_inf(strategy):
    cfg = api.compose([f"strategy={strategy}"], output_dir="unused")
    plain = OmegaConf.to_container(cfg.strategy, resolve=True)
    knobs = list(_numeric_knobs(plain))
    for path in knobs:
        name = next(str(k) for k in reversed(path) if isinstance(k, str))
        for bad in (math.nan, math.inf):
            with pytest.raises(Exception) as caught:
                instantiate(_with(plain, path, bad))
            error = _config_error(caught.value)
            assert error is not None, f"strategy={strategy} {'.'.join(map(str, path))}={bad}: {caught.value!r}"
            assert f".{name}" in str(error), str(error)


# --- 2-4. the trainer's loop and the seed, before the model --------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1; expected a value >= 0"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0; expected an integer >= 1"),
        (
            "trainer.val_check_interval=0",
            "trainer.val_check_interval=0; expected a share of the epoch in (0, 1] or a number of batches >= 1",
        ),
        ("trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5; expected a share of the epoch"),
        ("trainer.max_epochs=-5", "trainer.max_epochs=-5; expected an integer >= -1"),
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc'; expected an integer >= -1"),
        ("trainer.max_steps=nan", "trainer.max_steps=nan; expected an integer >= -1"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0; expected an integer >= 1"),
        (
            "trainer.limit_train_batches=-1",
            "trainer.limit_train_batches=-1; expected a share of the epoch in [0, 1] or a number of batches >= 0",
        ),
        ("trainer.limit_val_batches=nan", "trainer.limit_val_batches=nan; expected a share of the epoch in [0, 1]"),
        ("trainer.limit_test_batches=abc", "trainer.limit_test_batches='abc'; expected a share"),
        ("trainer.num_sanity_val_steps=-5", "trainer.num_sanity_val_steps=-5; expected an integer >= -1"),
        ("trainer.num_sanity_val_steps=abc", "trainer.num_sanity_val_steps='abc'; expected an integer >= -1"),
        ("+trainer.gradient_clip_algorithm=foo", "trainer.gradient_clip_algorithm='foo'; expected one of"),
        ("seed=-1", "seed=-1; expected an integer in [0, 4294967295]"),
        ("seed=1099511627776", "seed=1099511627776; expected an integer in [0, 4294967295]"),
        ("seed=1.5", "seed=1.5; expected an integer in [0, 4294967295]"),
        ("seed=abc", "seed='abc'; expected an integer in [0, 4294967295]"),
        ("zeroshot_test=no", "zeroshot_test='no'; expected true or false"),
        ("trainer.enable_progress_bar=off", "trainer.enable_progress_bar='off'; expected true or false"),
        ("trainer.deterministic=maybe", "trainer.deterministic='maybe'; expected true or false"),
        ("+module.optimizer.eps=nan", "module.optimizer.eps=nan; expected a finite number >= 0"),
        ("model.dtype=float64", "model.dtype='float64'; expected one of ['bfloat16', 'float16', 'float32']"),
    ],
)
def test_loop_seed_and_dtype_knobs_are_refused_before_the_model(compose, monkeypatch, override, message):
    assert _refusal(compose, monkeypatch, override).startswith(message)


# --- 5-6. strategy knobs a library would only refuse inside the model -----------------------------------


def test_a_bad_param_filter_regex_names_the_key_and_the_regex_error(compose, monkeypatch):
    message = _refusal(compose, monkeypatch, "strategy=spu", "strategy.param_filter='mlp.(up'")
    assert message == (
        "strategy.param_filter='mlp.(up' is not a regular expression (missing ), unterminated subpattern at position 4)"
    )


def test_an_unknown_lora_init_lists_the_accepted_values(compose, monkeypatch):
    message = _refusal(compose, monkeypatch, "strategy=lora", "strategy.init=foo")
    assert message.startswith("strategy.init='foo'; expected true, false or one of ['gaussian', 'olora',")
    assert "pissa_niter_<n>" in message


@pytest.mark.parametrize("init", ["corda", "eva", "loftq"])
def test_a_lora_init_that_needs_a_run_of_its_own_is_refused_with_why(compose, monkeypatch, init):
    """peft fails deep inside the wrapping (corda, loftq) or needs a step of its own after it (eva)."""
    message = _refusal(compose, monkeypatch, "strategy=lora", f"strategy.init={init}")
    assert message.startswith(f"strategy.init={init} needs ") and message.endswith(
        "which mllmft does not run: not supported"
    )


def test_pissa_with_its_iterations_is_a_known_lora_init(compose):
    cfg = compose("strategy=lora", "strategy.init=pissa_niter_4")
    assert instantiate(cfg.strategy).options["init_lora_weights"] == "pissa_niter_4"


# --- 7. mllmft-chat -------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", ["[]", "['']", "[a.png,3]"])
def test_chat_without_an_image_path_is_one_line(compose, monkeypatch, image):
    monkeypatch.setattr("mllmft.build.build_backbone", lambda *a, **k: pytest.fail("the model was built"))
    cfg = compose(f"image={image}", "prompt=What?", config_name="chat")
    with pytest.raises(ConfigError, match=r"^image=.*; expected an image file or a non-empty list of them"):
        answer(cfg)


# --- 8-9. user YAML: tags, alias bombs ------------------------------------------------------------------

PYTHON_TAG = 'run: !!python/object/apply:os.system ["echo hostile"]\n'


def _billion_laughs(levels: int) -> str:
    """Anchors of 10 aliases each to the previous: 1.1 · 10^levels values once expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _compose_file(tmp_path, text: str):
    (tmp_path / "user.yaml").write_text(text)
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return hydra_compose(config_name="user")


def test_a_python_tag_in_a_user_config_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _compose_file(tmp_path, "seed: 1\n" + PYTHON_TAG)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'user.yaml'}, line 2: could not determine a constructor for the tag")
    assert "python/object/apply:os.system" in message and "\n" not in message


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    """Just over the bound (before, OmegaConf made all its values: seconds here, forever at 8 levels)."""
    with pytest.raises(ConfigError, match=r"user.yaml: its aliases \(\*name\) expand it to more than 100,000 values"):
        _compose_file(tmp_path, _billion_laughs(5))


def test_an_alias_to_itself_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"an alias \(\*name\) inside the value it names"):
        _compose_file(tmp_path, "a: &a [1, *a]\n")


@pytest.mark.parametrize(
    "text, problem",
    [("a: 1\na: 2\n", "line 2: found duplicate key a"), ("a: [1\n", "line 2: expected ',' or ']', but got")],
)
def test_a_broken_user_config_is_one_line(tmp_path, text, problem):
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path / 'user.yaml'))}, {re.escape(problem)}"):
        _compose_file(tmp_path, text)


def test_aliases_that_stay_small_still_compose(tmp_path):
    cfg = _compose_file(tmp_path, "base: &base {lr: 0.1, wd: 0}\nrun: {<<: *base, lr: 0.2}\n")
    assert cfg.run == {"lr": 0.2, "wd": 0}


@pytest.mark.parametrize("text", [PYTHON_TAG, _billion_laughs(8)])
def test_hostile_user_yaml_on_the_command_line_is_one_line(tmp_path, text):
    """Read by Hydra before the entry point runs: its one-line report (exit 1), in a second, no traceback."""
    (tmp_path / "hostile.yaml").write_text("defaults:\n  - train\n  - _self_\n" + text)
    args = [BIN / "mllmft-train", "--config-dir", str(tmp_path), "--config-name", "hostile"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "hostile" not in proc.stdout
    assert proc.stderr.splitlines()[0].startswith(f"{tmp_path / 'hostile.yaml'}")


# --- 10. directories --------------------------------------------------------------------------------------


def test_an_output_dir_under_a_file_is_refused(compose, monkeypatch, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert _refusal(compose, monkeypatch, run_dir="afile/run") == (
        f"paths.output_dir='{afile / 'run'}' cannot be created: {afile} is not a directory"
    )
    assert _refusal(compose, monkeypatch, run_dir="afile") == f"paths.output_dir='{afile}' is not a directory"


def test_a_read_only_output_dir_is_refused(compose, monkeypatch, tmp_path):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and access(path, mode))
    message = _refusal(compose, monkeypatch, run_dir="read_only/run")
    assert message == f"paths.output_dir='{read_only / 'run'}' cannot be created: {read_only} is not writable"


PRETRAIN = {"source": {"_target_": "mllmft.data.ShapesSource"}, "max_steps": 1, "batch_size": 2, "lr": 1e-3}


def test_a_cache_dir_that_cannot_hold_the_pretrained_model_is_refused_before_pretraining(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"^paths.cache_dir='.*afile/cache' cannot be created: .*afile is not"):
        pretrained_tiny("llava", TINY, PRETRAIN, tmp_path / "afile" / "cache")


def test_pretraining_knobs_are_checked_before_pretraining(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.pretrain.lr=nan; expected a finite number > 0$"):
        pretrained_tiny("llava", TINY, {**PRETRAIN, "lr": math.nan}, tmp_path / "cache")


def test_a_run_dir_hydra_cannot_make_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    config = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "afile" / "run")}}})
    with pytest.raises(SystemExit) as caught:
        RunDirectoryCheck().on_run_start(config)
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        f"mllmft: error: hydra.run.dir='{tmp_path / 'afile' / 'run'}' cannot be created: "
        f"{tmp_path / 'afile'} is not a directory\n"
    )


def test_the_entry_points_check_their_run_dir(tmp_path):
    (tmp_path / "afile").write_text("")
    args = [BIN / "mllmft-train", f"hydra.run.dir={tmp_path / 'afile'}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"mllmft: error: hydra.run.dir='{tmp_path / 'afile'}' is not a directory\n"


# --- 11. what a strategy cannot train with, before the zero-shot test -------------------------------------


def test_ewc_without_upstream_data_is_refused_at_start_up(compose, monkeypatch):
    message = _refusal(compose, monkeypatch, "strategy=ewc", *NO_UPSTREAM)
    assert message.startswith("strategy=ewc estimates its Fisher on the upstream data, and data.upstream is empty")


def test_ewc_without_upstream_data_may_still_evaluate(compose):
    cfg = compose("strategy=ewc", *NO_UPSTREAM, "change=evaluate")
    assert api.build(cfg).strategy.name == "ewc"


def test_commit_with_gradient_accumulation_is_refused_at_start_up(compose, monkeypatch):
    overrides = ("strategy=commit_lora", "scope=connector_llm", "trainer.accumulate_grad_batches=2")
    assert _refusal(compose, monkeypatch, *overrides) == (
        "CoMMIT measures each optimizer step on its own batch: trainer.accumulate_grad_batches=2; "
        "set it to 1 (raise data.batch_size instead)"
    )


# --- 12. model.dtype --------------------------------------------------------------------------------------


def test_model_dtype_applies_to_tiny_models(compose):
    parts = api.build(compose("model.dtype=bfloat16"))
    assert {p.dtype for p in parts.backbone.model.parameters()} == {torch.bfloat16}


def test_an_unknown_optimized_metric_is_refused_before_any_evaluation(compose, monkeypatch):
    """Once a KeyError once the run was over (results.json written, the sweep's point lost)."""
    import lightning as L

    from mllmft.results import metric_value
    from mllmft.run import run

    def no_test(*args, **kwargs):
        raise AssertionError("evaluated before the setting was refused")

    monkeypatch.setattr(L.Trainer, "test", no_test)
    with pytest.raises(ConfigError, match=r"optimized_metric='Hh'; expected a trade-off score \['S_t'"):
        run(compose("optimized_metric=Hh"))
    # E, F and O exist only against a zero-shot test: without one a sweeper gets nan, not a KeyError
    assert math.isnan(metric_value({"tradeoff": {"final": {"S_t": 1.0}}, "scores": {"final": {}}}, "E"))
