"""Start-up imports only what a command uses: ``replay`` never loads river, scipy, pandas or
scikit-learn (Half-Space Trees build their structure without river), nor the service's Kafka,
HTTP and metrics clients; ``--version`` loads none of the pipeline's libraries."""

from __future__ import annotations

import subprocess
import sys

from conftest import VAULT_SAMPLES

HEAVY = {"river", "scipy", "pandas", "sklearn", "kafka", "httpx", "prometheus_client",
         "sqlalchemy", "alembic", "numpy", "pydantic", "rich", "msgspec"}


def modules_after(*args: str) -> set[str]:
    """Top-level packages of HEAVY that running ``secretscope ARGS`` imported."""
    code = ("import sys\nfrom secretscope.cli import main\n"
            f"sys.argv = ['secretscope', *{list(args)!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(eval(out.stdout.strip().splitlines()[-1]))  # a printed list of names


def test_replay_imports_no_models_library_nor_service_clients(tmp_path):
    loaded = modules_after("replay", *map(str, VAULT_SAMPLES), "--store",
                           f"sqlite:///{tmp_path}/s.db", "--no-table", "-q")
    assert "numpy" in loaded and "sqlalchemy" in loaded  # it did run the pipeline
    assert not loaded & {"river", "scipy", "pandas", "sklearn", "kafka", "httpx",
                         "prometheus_client"}, loaded


def test_version_imports_none_of_the_pipeline_libraries():
    assert modules_after("--version") == set()


def test_reopening_a_current_store_skips_alembic(tmp_path):
    """The schema check reads the version table; alembic loads only when there is work."""
    url = f"sqlite:///{tmp_path}/s.db"
    code = ("import sys\nfrom secretscope.store import Store\n"
            f"Store({url!r}).close()\nprint('alembic' in sys.modules)\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120) for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["True", "False"], [r.stderr for r in runs]
