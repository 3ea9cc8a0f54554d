"""A wheel works without the repository: built from the checkout, installed (not editable) into a
fresh venv that borrows this venv's dependencies, run from elsewhere."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mllmft.config import CONF_DIR
from tests.helpers.runs import FAST, SMALL_LLAVA
from tests.helpers.shared import once, session_dir

ROOT = CONF_DIR.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding the wheel, the wheel)."""

    def build(dist: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
            check=True,
            capture_output=True,
            timeout=600,
        )

    # once per session: two builds at a time in one source tree collide (make test runs several workers)
    wheel = next(once(session_dir(tmp_path_factory) / "wheel", build).glob("mllmft-*.whl"))
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True, timeout=120)
    python = tmp / "venv" / "bin" / "python"
    target = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # the dependencies from this venv, as a plain path: its .pth files (the editable mllmft) are not read
    (target / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return python, wheel


def _run(python, *args, cwd):
    env = {**os.environ, "MLLMFT_CACHE": str(cwd / "cache"), "MLLMFT_ROOT": str(cwd)}
    env.pop("PYTHONPATH", None)
    return subprocess.run([python, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_the_wheel_carries_every_config_and_the_shipped_checkpoint(installed):
    from mllmft.pretrain import SHIPPED

    names = set(zipfile.ZipFile(installed[1]).namelist())
    configs = {f"mllmft/conf/{p.relative_to(CONF_DIR)}" for p in CONF_DIR.rglob("*.yaml")}
    assert configs and configs <= names
    shipped = {f"mllmft/pretrained/{p.relative_to(SHIPPED)}" for p in SHIPPED.rglob("*") if p.is_file()}
    assert any(n.endswith("model.safetensors") for n in shipped) and shipped <= names
    assert not any(n.startswith(("tests/", "conf/")) for n in names)


def test_the_installed_wheel_composes_and_runs_a_step(installed, tmp_path):
    python, _ = installed
    where = _run(
        python, "-c", "import mllmft, mllmft.config as c; print(mllmft.__file__); print(c.CONF_DIR)", cwd=tmp_path
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout  # not the checkout
    job = _run(python, "-m", "mllmft.train", "--cfg", "job", cwd=tmp_path)
    assert job.returncode == 0 and "strategy:" in job.stdout, job.stderr[-2000:]
    step = _run(python, "-m", "mllmft.train", "debug=fdr", *FAST, *SMALL_LLAVA, "hydra.run.dir=run", cwd=tmp_path)
    assert step.returncode == 0, step.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()


def test_the_lock_satisfies_the_ranges():
    """constraints.txt (what `make install` installs) lies inside every range pyproject.toml states."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    lock = {canonicalize_name(k): v for k, v in lock.items()}
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is not in constraints.txt"
        assert requirement.specifier.contains(lock[name]), f"{name}=={lock[name]} outside {requirement.specifier}"
