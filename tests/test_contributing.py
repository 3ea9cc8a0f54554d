"""CONTRIBUTING.md's checklists, enforced: each new strategy, family, data set and merge is wired in
everywhere the checklist says (README tables, exports, config bases), and the tests share helpers
through tests/helpers/ rather than importing each other."""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import mllmft.data
import mllmft.merges
import mllmft.strategies
from mllmft.backbones import FAMILIES
from mllmft.config import CONF_DIR
from tests.helpers.engines import strategies_in_matrix
from tests.helpers.models import TINY_MODELS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _table_rows(section: str, until: str) -> set[str]:
    """The first-column names (`name`) of the Markdown tables between two README headings."""
    text = README[README.index(section) : README.index(until, README.index(section))]
    first_cells = re.findall(r"^\| ([^|]+) \|", text, re.M)  # "`a`" or "`a`, `b`"
    return {name for cell in first_cells for name in re.findall(r"`([a-z0-9_]+)`", cell)}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def _exported_target(group: str, option: str, package) -> None:
    target = OmegaConf.load(CONF_DIR / group / f"{option}.yaml").get("_target_")
    if target is None:
        return
    module, name = target.rsplit(".", 1)
    if group == "strategy":  # a plug-in: its method group's module, named in full (no export to add)
        assert module.startswith("mllmft.strategies.") and module.split(".")[2] != "core", (
            f"strategy/{option}.yaml: {target} is not in a method group of mllmft/strategies/"
        )
    elif module.startswith(package.__name__):
        assert name in package.__all__, f"{group}/{option}.yaml: {name} is not exported by {package.__name__}"


@pytest.mark.parametrize(
    "group, section, until",
    [
        ("strategy", "### Strategies", "### CoMMIT"),
        ("merge", "### Post-hoc merges", "## Reading results"),
        ("source", "## Data sets", "## Bring your own data"),
    ],
)
def test_every_choice_has_a_row_in_its_readme_table(group, section, until):
    missing = sorted(set(_options(group)) - _table_rows(section, until))
    assert not missing, f"README's {section!r} table has no row for {group}={missing}"


def test_every_family_has_a_row_in_the_models_table():
    missing = sorted(set(FAMILIES) - _table_rows("## Models", "## Real checkpoints"))
    assert not missing, f"README's models table has no row for the families {missing}"


@pytest.mark.parametrize(
    "group, package", [("strategy", mllmft.strategies), ("merge", mllmft.merges), ("source", mllmft.data)]
)
def test_every_configured_class_is_exported_by_its_package_or_a_plug_in(group, package):
    for option in _options(group):
        _exported_target(group, option, package)


def test_every_training_strategy_is_in_the_engine_equality_matrix(compose):
    from hydra.utils import instantiate

    training = {o for o in _options("strategy") if instantiate(compose(f"strategy={o}").strategy).trains}
    missing = sorted(training - strategies_in_matrix())
    assert not missing, f"tests/helpers/engines.py: add {missing} to FAST, SLOW or DDP_ONLY"


def test_every_tiny_model_config_extends_the_tiny_base():
    for name in TINY_MODELS:
        raw = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
        assert "_tiny" in raw.get("defaults", []), f"model/{name}.yaml: start it with defaults: [_tiny, _self_]"


def test_test_modules_share_helpers_not_each_other():
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                leaf = name.removeprefix("tests.")
                assert not leaf.startswith(("test_", "conftest")), (
                    f"{path.relative_to(ROOT)} imports {name}: move what it shares to tests/helpers/"
                )


@pytest.mark.parametrize(
    "package", ["mllmft.api", "mllmft.backbones", "mllmft.data", "mllmft.merges", "mllmft.metrics", "mllmft.strategies"]
)
def test_every_public_class_and_function_has_a_docstring(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            doc = (obj.__doc__ or "").strip()  # not inherited; a dataclass's generated "Name(...)" does not count
            assert doc and not doc.startswith(f"{name}("), f"{package}.{name} has no docstring"


@pytest.mark.parametrize("option", _options("strategy"))
def test_a_strategy_is_named_by_its_config_file(compose, option):
    """One name per strategy, the `strategy=` choice: in results.json, checkpoints, logs and reports."""
    from mllmft.strategies.core.contract import from_config

    assert from_config(compose(f"strategy={option}")).name == option


def _imports_of_mllmft() -> dict[str, set[str]]:
    """module -> the mllmft modules it imports anywhere in its file (lazy and type-only imports too)."""
    root = Path(mllmft.__file__).parent
    modules = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }

    def module_of(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[module] |= {m for n in names if n.startswith("mllmft") and (m := module_of(n)) not in (None, module)}
    return graph


def test_the_import_graph_has_no_cycle():
    """Layers import downwards only (run -> build -> module -> strategies -> engines ...): a module
    never imports, even lazily or for types, one that imports it back."""
    graph, done, path = _imports_of_mllmft(), set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module) :] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
