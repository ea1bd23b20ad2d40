"""The built wheel, installed non-editable into a fresh venv, works from any folder: everything
under the ``secretscope`` name, the default config and rules inside the package, shipped from the
one source in config/."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    (built,) = out.glob("secretscope-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed in it; the dependencies come from the test
    environment's site-packages through a .pth line (its own .pth files, such as the editable
    install's finder, are not processed from there, so the checkout cannot leak in)."""
    env = tmp_path_factory.mktemp("venv") / "v"
    venv.create(env, with_pip=False)
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"),
                    "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True,
                   text=True)
    return env


def test_wheel_installs_only_under_the_product_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"secretscope", next(t for t in tops if t.endswith(".dist-info"))}
    assert "secretscope/models/rules.py" in names
    assert "secretscope/migrations/versions/0001_initial.py" in names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"secretscope = secretscope.cli:main" in entry


def test_default_config_ships_from_its_one_source(wheel):
    z = zipfile.ZipFile(wheel)
    shipped = {n.removeprefix("secretscope/defaults/"): z.read(n) for n in z.namelist()
               if n.startswith("secretscope/defaults/") and not n.endswith(".py")}
    source = {str(p.relative_to(ROOT / "config")): p.read_bytes()
              for p in (ROOT / "config").rglob("*") if p.is_file() and p.suffix != ".py"
              and "__pycache__" not in p.parts}
    assert shipped == source
    assert "default.yaml" in shipped and any(n.startswith("rules/") for n in shipped)


def _run(env: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(env / "bin" / "secretscope"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_installed_wheel_replays_with_the_embedded_default_from_any_folder(installed, tmp_path):
    from secretscope import __version__

    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    version = _run(installed, "--version", cwd=elsewhere)
    assert version.returncode == 0 and version.stdout.strip() == f"secretscope {__version__}"

    py = str(installed / "bin" / "python")
    where = subprocess.run([py, "-c", "import secretscope, importlib.util, json; print(json.dumps("
                            "[secretscope.__file__] + [bool(importlib.util.find_spec(m)) for m in "
                            "('pipeline', 'models', 'config')]))"], cwd=elsewhere,
                           capture_output=True, text=True, check=True)
    location, *top_level = json.loads(where.stdout)
    assert Path(location).is_relative_to(installed) and top_level == [False, False, False]

    log = elsewhere / "fleet.log.gz"
    sim = _run(installed, "simulate", str(log), "--calls", "20000", "--days", "3", cwd=elsewhere)
    assert sim.returncode == 0, sim.stderr
    alerts = elsewhere / "alerts.jsonl"
    rep = _run(installed, "replay", str(log), "--alerts-out", str(alerts), "--store",
               f"sqlite:///{elsewhere / 's.db'}", "--no-table", "-q", cwd=elsewhere)
    assert rep.returncode == 0, rep.stderr
    findings = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert findings, rep.stderr
    # the packaged rules were loaded: all of them, from inside the installed package
    valid = _run(installed, "validate", cwd=elsewhere)
    rules = len(list((ROOT / "config" / "rules").glob("*.yaml")))
    assert valid.returncode == 0 and f" {rules} rules" in valid.stderr, valid.stderr
