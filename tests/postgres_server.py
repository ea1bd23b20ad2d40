"""A PostgreSQL server for the tests, started once per session by ``scripts/postgres``.

Use it from a test module with::

    from postgres_server import postgres_url  # noqa: F401

and ask for the ``postgres_url`` fixture. If ``SECRETSCOPE_TEST_POSTGRES_URL`` is set the tests use
that database instead (nothing is started or stopped). Otherwise the script installs PostgreSQL
from Debian packages when missing (once per machine), creates a cluster in a temporary directory
on a free port, and the fixture stops it and removes the directory at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "postgres"
ENV_URL = "SECRETSCOPE_TEST_POSTGRES_URL"
# First start on a fresh machine includes `apt-get install postgresql`.
START_TIMEOUT = 900


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    # Short path under /tmp: the server's OS user must reach it and it holds the Unix socket.
    workdir = tempfile.mkdtemp(prefix="ss-pg-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        res = None
        for _ in range(3):  # another process may grab the free port before the server binds it
            res = _run("start", "--dir", workdir, "--port", str(free_port()),
                       timeout=START_TIMEOUT)
            if res.returncode == 0 or "in use" not in res.stderr:
                break
        assert res is not None
        if res.returncode != 0:
            pytest.fail(f"scripts/postgres start failed (exit {res.returncode}):\n"
                        f"{res.stdout}{res.stderr}", pytrace=False)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("url=")]
        if not lines:
            pytest.fail(f"scripts/postgres start printed no url:\n{res.stdout}{res.stderr}",
                        pytrace=False)
        yield lines[-1][len("url="):]
    finally:
        _run("stop", "--dir", workdir, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)
