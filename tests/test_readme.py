"""README: the quick starts use only sub-commands and options that exist, their Python imports
resolve, and every link to docs/ (from the README and between the docs) lands on a file and
heading that exist.

Sub-commands are read from the CLI's command tree (typer's) (which word is a sub-command and which an
argument), then each is confirmed through the installed command, ``secretscope <cmd> --help``
in a subprocess, whose help text must name every option the README passes to it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import typer
import yaml

from secretscope.cli import app

ROOT = Path(__file__).resolve().parents[1]
# the installed console script, as the README's reader runs it
SECRETSCOPE = str(Path(sys.executable).with_name("secretscope"))
README = ROOT / "README.md"
USERS = ("SOC engineer", "SIEM integrator", "Data scientist")
# shlex punctuation that ends one command on a line: &&, ||, |, ;, $( ... )
_SEPARATORS = set("();|&<>")


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section (up to the next ``## `` heading)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def _fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def _quick_start() -> str:
    return _section(README.read_text(), "Quick start")


def _shell_lines(block: str) -> list[str]:
    """Logical lines of a shell block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", block)
    return [line for line in joined.splitlines() if line.strip()]


def secretscope_invocations(block: str) -> list[list[str]]:
    """The words after each ``secretscope`` command word in a shell block."""
    found = []
    for line in _shell_lines(block):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        for i, word in enumerate(words):
            if word == "secretscope" and (i == 0 or set(words[i - 1]) <= _SEPARATORS):
                rest = []
                for w in words[i + 1:]:
                    if set(w) <= _SEPARATORS:
                        break
                    rest.append(w)
                found.append(rest)
    return found


def split_invocation(words: list[str]) -> tuple[list[str], list[str]]:
    """(sub-command path, options) of one invocation, read against the CLI's command tree."""
    command = typer.main.get_command(app)
    path: list[str] = []
    options: list[str] = []
    for word in words:
        if word.startswith("-"):
            options.append(word.split("=", 1)[0])
        elif getattr(command, "commands", None) is not None and not options:
            sub = command.commands.get(word)
            takes_arguments = any(p.param_type_name == "argument" for p in command.params)
            if sub is None and not takes_arguments:
                raise AssertionError(f"secretscope {' '.join(path + [word])}: no such sub-command")
            if sub is not None:
                command = sub
                path.append(word)
    return path, options


@cache
def help_text(path: tuple[str, ...]) -> str:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run([SECRETSCOPE, *path, "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"secretscope {' '.join(path)} --help: {proc.stderr}"
    usage = " ".join(["secretscope", *path])
    assert f"Usage: {usage}" in proc.stdout, f"'{usage} --help' did not describe {usage}"
    return proc.stdout


def _names_option(help_out: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_out) is not None


def test_the_first_screen_has_the_two_commands_and_a_quick_start_per_user():
    text = README.read_text()
    first_screen = "\n".join(text.splitlines()[:80])
    assert "scripts/demo" in first_screen and "scripts/test" in first_screen
    for user in USERS:
        assert f"### {user}" in first_screen, f"no quick start for the {user} on the first screen"
    for user in USERS:
        sub = re.search(rf"^### {user}.*?\n(.*?)(?=^### |\Z)", _quick_start(), re.M | re.S)
        assert sub and any(secretscope_invocations(b) for b in _fenced(sub.group(1), "sh")), \
            f"the {user}'s quick start runs no secretscope command"


def _quick_start_invocations() -> list[tuple[str, ...]]:
    found = []
    for block in _fenced(_quick_start(), "sh"):
        found += [tuple(words) for words in secretscope_invocations(block)]
    return found


@pytest.mark.parametrize("words", _quick_start_invocations(), ids=lambda w: " ".join(w[:3]))
def test_quick_start_commands_and_options_exist(words):
    path, options = split_invocation(list(words))
    help_out = help_text(tuple(path))
    unknown = [o for o in options if not _names_option(help_out, o)]
    assert not unknown, f"secretscope {' '.join(path)} has no option {', '.join(unknown)}"


def test_the_invocation_reader_catches_a_wrong_command_and_option():
    """The checks above can fail: an unknown sub-command and an unknown option are caught."""
    with pytest.raises(AssertionError, match="no such sub-command"):
        split_invocation(["alerts", "acknowledge", "ID"])
    path, options = split_invocation(
        secretscope_invocations("secretscope alerts ack x --stroe y  # typo\n")[0])
    assert (path, options) == (["alerts", "ack"], ["--stroe"])
    assert not _names_option(help_text(("alerts", "ack")), "--stroe")
    assert _names_option(help_text(("alerts", "ack")), "--store")


def test_quick_start_python_imports_resolve():
    blocks = _fenced(_quick_start(), "python")
    imports = [line for b in blocks for line in b.splitlines()
               if re.match(r"(from \S+ )?import ", line)]
    assert any(re.match(r"from secretscope[.\w]* import ", line) for line in imports)
    top_level = [line for line in imports if re.match(r"(from|import) (pipeline|models|config)\b", line)]
    assert not top_level, f"README imports outside the secretscope package: {top_level}"
    for line in imports:
        exec(compile(line, "README.md", "exec"), {})


def test_quick_start_files_exist():
    """Paths in the repository that the quick starts name (example configs, the notebook)."""
    named = set(re.findall(r"(?:config/examples|notebooks)/[\w./-]+\.(?:yaml|ipynb)",
                           _quick_start()))
    assert named, "the quick starts name no example config or notebook"
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"README quick start names missing files: {missing}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S),
                       re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in heads}


def _doc_links(source: Path) -> list[tuple[str, str]]:
    """(target path relative to the repo, anchor) of every relative .md link in ``source``."""
    links = []
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
        file_part, _, anchor = target.partition("#")
        if "://" in file_part or not file_part.endswith(".md"):
            continue
        resolved = (source.parent / file_part).resolve()
        links.append((str(resolved.relative_to(ROOT)), anchor))
    return links


def test_readme_links_every_reference_doc_and_each_resolves():
    links = _doc_links(README)
    assert {t for t, _ in links} >= {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}, \
        "a docs/ file is not in the README's Reference index"
    broken = sorted({t for t, _ in links if not (ROOT / t).is_file()})
    assert not broken, f"README links to missing docs: {broken}"


@pytest.mark.parametrize("doc", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_links_between_docs_resolve(doc):
    broken = []
    for target, anchor in _doc_links(ROOT / "docs" / doc):
        path = ROOT / target
        if not path.is_file():
            broken.append(target)
        elif anchor and anchor not in _anchors(path.read_text()):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"docs/{doc} links to missing files or headings: {broken}"


def _point_at(sink: dict, servers: dict, ca_file: str) -> dict:
    """The example's sink with its address swapped for the local stand-in's."""
    server = servers[sink["type"]]
    if sink["type"] == "syslog":
        return {**sink, "port": server.port, "ca_file": ca_file}
    path = urlsplit(sink["url"]).path
    tls = {"ca_file": ca_file} if server.url.startswith("https") else {}
    return {**sink, "url": server.url + path, **tls}


@pytest.mark.slow
def test_the_example_sinks_config_delivers_to_each_product(tmp_path):
    """config/examples/sinks.yaml, as the SIEM integrator's quick start uses it, delivers signed
    webhooks, Splunk HEC events, Elastic documents and LEEF over TLS syslog to local stand-ins
    of those products, with credentials from the environment variables the file names."""
    from fake_siems import (ElasticServer, SplunkHecServer, SyslogServer, WebhookServer,
                            make_local_ca)

    example = yaml.safe_load((ROOT / "config/examples/sinks.yaml").read_text())
    assert {s["type"] for s in example["sinks"]} == {"webhook", "splunk_hec", "elastic", "syslog"}
    (tmp_path / "ca").mkdir()
    ca = make_local_ca(tmp_path / "ca")
    servers = {"webhook": WebhookServer(), "splunk_hec": SplunkHecServer("hec-token", ca),
               "elastic": ElasticServer("ZXMta2V5Om9r", ca), "syslog": SyslogServer(ca)}
    try:
        config = tmp_path / "sinks.yaml"
        example["rules"] = {"directory": str(ROOT / "config" / "rules")}
        example["sinks"] = [_point_at(s, servers, str(ca.ca_file)) for s in example["sinks"]]
        config.write_text(yaml.safe_dump(example))
        env = {**os.environ, "SOAR_WEBHOOK_SECRET": servers["webhook"].secret,
               "SPLUNK_HEC_TOKEN": "hec-token", "ES_API_KEY": "ZXMta2V5Om9r"}
        store = f"sqlite:///{tmp_path / 'siem.db'}"
        for args in (["simulate", "audit.log.gz", "--days", "3", "--seed", "11", "--calls", "15000"],
                     ["replay", "audit.log.gz", "--config", str(config), "--store", store,
                      "--no-table", "--quiet", "--alerts-out", "alerts.jsonl"],
                     ["deliver", "--config", str(config), "--store", store, "--once"]):
            proc = subprocess.run([SECRETSCOPE, *args], cwd=tmp_path, env=env, text=True,
                                  capture_output=True, timeout=600)
            assert proc.returncode == 0, f"secretscope {args[0]}: {proc.stderr}"
        versions = {(d["finding_info"]["uid"], d["unmapped"]["secretscope"]["version"])
                    for d in map(json.loads, (tmp_path / "alerts.jsonl").open())}
        assert versions, "the simulated log raised no finding"
        hooks = {(k.rsplit(".", 1)[0], int(k.rsplit(".", 1)[1]))
                 for k in servers["webhook"].received}
        assert hooks == versions
        assert set(servers["splunk_hec"].received) == versions
        assert set(servers["elastic"].writes) <= versions
        assert {i for i, _ in servers["elastic"].writes} == {i for i, _ in versions}
        leef = servers["syslog"].wait_for(1)
        assert leef and all(m.msg.startswith("LEEF:2.0|") for m in leef), servers["syslog"].errors
    finally:
        for server in servers.values():
            server.close()
