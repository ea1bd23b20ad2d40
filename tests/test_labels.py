"""Analysts' labels on findings (`secretscope alerts label`), `Store.false_positive_labels`, and
migration 0002 on an existing 0001 store, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone

import pytest
from alembic import command
from conftest import VAULT_SAMPLES
from postgres_server import postgres_url  # noqa: F401
from sqlalchemy import create_engine, inspect, select
from test_store_postgres import (_head, alembic_config, db_url, describe,  # noqa: F401
                                 insert_finding_row, make_finding, schema_diff)
from typer.testing import CliRunner

from secretscope.cli import app
from secretscope.errors import SecretscopeError, UnknownFindingError
from secretscope.store import (FalsePositiveLabel, Store, feature_history,
                            findings, labels, snapshots)

NEW_TABLES = {"feature_history", "feature_sets", "labels"}
OUTBOX_TABLES = {"outbox", "delivery_dead_letters"}  # migration 0003
VERSION_TABLES = {"finding_versions"}  # migration 0004


@pytest.fixture
def replayed(tmp_path, samples):
    """A SQLite store holding the findings of the reference Vault samples."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    res = CliRunner().invoke(app, ["replay", *map(str, VAULT_SAMPLES), "--store", url,
                                   "--no-table", "--quiet"])
    assert res.exit_code == 0, res.output
    store = Store(url)
    try:
        stored = store.recent_findings(100)
    finally:
        store.close()
    assert len(stored) >= 3
    return url, stored


def secretscope(*args):
    return subprocess.run([shutil.which("secretscope"), *map(str, args)], capture_output=True,
                          text=True)


def test_label_round_trip_through_the_cli(replayed):
    url, stored = replayed
    first, second = stored[0], stored[1]
    runner = CliRunner()
    res = runner.invoke(app, ["alerts", "label", first["finding_info"]["uid"], "fp",
                              "--note", "nightly backup job", "--store", url])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["alerts", "--store", url, "label",  # group option works too
                              second["finding_info"]["uid"], "tp"])
    assert res.exit_code == 0, res.output

    store = Store(url)
    try:
        fps = store.false_positive_labels()
        assert store.labels_of([first["finding_info"]["uid"], second["finding_info"]["uid"],
                                "nope"]) == {first["finding_info"]["uid"]: "fp",
                                             second["finding_info"]["uid"]: "tp"}
        with store.engine.connect() as conn:
            row = conn.execute(select(labels).where(
                labels.c.finding_id == first["finding_info"]["uid"])).one()
    finally:
        store.close()
    assert row.note == "nightly backup job" and row.identity == first["actor"]["user"]["uid"]
    assert len(fps) == 1
    fp = fps[0]
    assert isinstance(fp, FalsePositiveLabel)
    assert fp.finding_id == first["finding_info"]["uid"]
    assert fp.identity == first["actor"]["user"]["uid"]
    assert fp.detectors == tuple(first["unmapped"]["secretscope"]["detectors"])
    assert fp.reason_codes == tuple(first["finding_info"]["types"]) and fp.reason_codes
    ocsf_time = datetime.fromtimestamp(first["time"] / 1000, timezone.utc)  # OCSF keeps ms
    assert fp.finding_time.tzinfo is not None
    assert abs((fp.finding_time - ocsf_time).total_seconds()) < 0.001
    assert fp.labelled_at.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - fp.labelled_at).total_seconds()) < 60
    with pytest.raises(AttributeError):
        fp.identity = "x"  # frozen

    listed = runner.invoke(app, ["alerts", "--store", url, "--limit", "100"])
    assert listed.exit_code == 0, listed.output
    assert "label" in listed.output
    line = next(l for l in listed.output.splitlines() if first["finding_info"]["uid"][:8] in l)
    assert "fp" in line.split("│")[-2]


def test_relabel_overwrites(replayed):
    url, stored = replayed
    uid = stored[0]["finding_info"]["uid"]
    runner = CliRunner()
    assert runner.invoke(app, ["alerts", "label", uid, "fp", "--store", url]).exit_code == 0
    assert runner.invoke(app, ["alerts", "label", uid, "tp", "--note", "confirmed",
                               "--store", url]).exit_code == 0
    store = Store(url)
    try:
        assert store.false_positive_labels() == []
        assert store.count(labels) == 1
        assert store.labels_of([uid]) == {uid: "tp"}
        store.label_finding(uid, "fp")
        assert [f.finding_id for f in store.false_positive_labels()] == [uid]
    finally:
        store.close()


def test_unknown_finding_and_bad_label_are_clear_errors(replayed):
    url, _ = replayed
    res = secretscope("alerts", "label", "no-such-finding", "fp", "--store", url)
    assert res.returncode == 2 and "error: no finding 'no-such-finding' in the store" in res.stderr
    res = secretscope("alerts", "label", "whatever", "maybe", "--store", url)
    assert res.returncode == 2 and "maybe" in res.stderr  # not one of tp, fp
    store = Store(url)
    try:
        with pytest.raises(UnknownFindingError):
            store.label_finding("no-such-finding", "tp")
        with pytest.raises(SecretscopeError, match="label must be one of tp, fp"):
            store.label_finding("x", "maybe")  # type: ignore[arg-type]
        assert store.count(labels) == 0
    finally:
        store.close()


def test_alerts_without_subcommand_still_lists(replayed):
    url, stored = replayed
    res = secretscope("alerts", "--store", url)
    assert res.returncode == 0, res.stderr
    assert "latest" in res.stdout and stored[0]["finding_info"]["title"][:20] in res.stdout


def test_labels_on_both_backends(db_url):  # noqa: F811
    store = Store(db_url)
    try:
        f = make_finding("ev-label-1")
        store.add_findings([f])
        assert store.label_finding(f.id, "fp", "known scanner") == f.identity
        (fp,) = store.false_positive_labels()
        assert fp.detectors == f.detectors
        assert fp.reason_codes == tuple(r.code for r in f.reasons)
        assert fp.finding_time == f.time and fp.finding_time.tzinfo is not None
        store.label_finding(f.id, "tp")
        assert store.false_positive_labels() == [] and store.count(labels) == 1
    finally:
        store.close()



def test_upgrade_of_an_existing_0001_store(db_url):  # noqa: F811
    """A store at revision 0001 with data in it gains the new tables; nothing else changes."""
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
        before = describe(engine)
        assert before["revision"] == "0001" and not NEW_TABLES & set(before)
        f = make_finding("ev-old-1")
        with engine.begin() as conn:
            insert_finding_row(conn, f)
            conn.execute(snapshots.insert().values(key="p0", next_offset=9, checksum="c",
                                                   data=b"x", updated_at=f.time))
    finally:
        engine.dispose()

    store = Store(db_url)  # opening the store migrates it
    try:
        after = describe(store.engine)
        assert after["revision"] == _head()
        assert set(after) - {"revision"} == (set(before) - {"revision"} | NEW_TABLES
                                             | OUTBOX_TABLES | VERSION_TABLES)
        assert all(after[t] == before[t] for t in ("snapshots",))  # 0005: dead_letters key
        # findings keep their columns and gain the version and status ones
        old_columns = before["findings"][0]
        assert after["findings"][0][:len(old_columns)] == old_columns
        assert [c[0] for c in after["findings"][0][len(old_columns):]] == [
            "version", "status_id", "analyst_status_id"]
        assert schema_diff(store.engine) == []
        insp = inspect(store.engine)
        assert {i["name"] for i in insp.get_indexes("feature_history")} == {
            "ix_feature_history_event_time", "ix_feature_history_event_id"}
        assert [fk["referred_table"] for fk in insp.get_foreign_keys("labels")] == ["findings"]
        assert store.count(findings) == 1 and store.count(snapshots) == 1
        assert store.count(feature_history) == 0
        # the finding stored before versions existed is its own version 1
        (v1,) = store.versions(f.id)
        assert v1["finding_info"]["uid"] == f.id and v1["activity_id"] == 1
        store.label_finding(f.id, "fp")
        assert [x.finding_id for x in store.false_positive_labels()] == [f.id]
    finally:
        store.close()
