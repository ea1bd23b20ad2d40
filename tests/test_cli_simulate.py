"""simulate -> replay (with progress) -> evaluate, through the console script."""

from __future__ import annotations

import re

import orjson
import pytest
import yaml

from conftest import ROOT
from test_cli_replay import CHECKER, secretscope

import subprocess
import sys


@pytest.mark.slow  # a simulated week through three commands
def test_simulate_replay_evaluate(tmp_path):
    log = tmp_path / "fleet.log.gz"
    proc = secretscope("simulate", log, "--days", "5", "--seed", "101", "--calls", "40000", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    labels = tmp_path / "fleet.log.labels.jsonl"
    episodes = [orjson.loads(l) for l in labels.read_text().splitlines()]
    classes = {e["class"] for e in episodes}
    assert {"root_token_use", "audit_device_tampering", "bruteforce_login",
            "enumeration_denied_burst", "stolen_token_new_network"} <= classes

    # progress lines on a long replay: report every batch
    config = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    config["runner"]["progress_seconds"] = 0
    config["rules"]["directory"] = str(ROOT / "config" / "rules")
    cfg = tmp_path / "progress.yaml"
    cfg.write_text(yaml.safe_dump(config))
    alerts = tmp_path / "alerts.jsonl"
    proc = secretscope("replay", log, "--alerts-out", alerts, "--config", cfg, "--store", "sqlite://",
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    progress = [l for l in proc.stderr.splitlines() if re.match(r"secretscope: [\d,]+ calls \(\d+% of input\)", l)]
    assert len(progress) > 10
    percents = [int(re.search(r"\((\d+)%", l).group(1)) for l in progress]
    assert percents == sorted(percents) and 0 < percents[-1] <= 100
    check = subprocess.run([sys.executable, CHECKER, alerts, log], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout

    proc = secretscope("evaluate", log, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for cls in classes:
        assert cls in out
    summary = re.search(r"recall ([\d.]+) \| precision ([\d.]+) .* false findings per 10k benign "
                        r"events ([\d.]+)", out.replace("\n", " "))
    assert summary, out
    recall, precision, false_rate = map(float, summary.groups())
    # not a tuning target, a smoke floor: the detectors must catch most simulated attacks
    assert recall >= 0.8 and precision >= 0.5 and false_rate < 5
    # detection delay per class and overall
    assert "median delay" in out and re.search(r"median detection delay \d+s", out), out
