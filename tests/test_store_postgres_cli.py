"""``agentguard db upgrade`` and ``agentguard db status`` against the test cluster, as real
processes (so whatever they print, on stdout or stderr, is checked for the password)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from agentguard.cli import app
from agentguard.store.postgres import DATABASE_URL_ENV, SCHEMA_VERSION, PostgresStore
from agentguard.testing import START
from tests.pg_support import Cluster

_MAIN = "from agentguard.cli import main; main()"


def agentguard(
    cwd: Path, *args: str, url: str | None = None, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGUARD_")}
    if url is not None:
        env[DATABASE_URL_ENV] = url
    env.update(extra or {})
    return subprocess.run(
        [sys.executable, "-c", _MAIN, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_db_upgrade_creates_then_is_idempotent_and_status_counts(
    pg_url: str, pg_cluster: Cluster, tmp_path: Path
) -> None:
    status = agentguard(tmp_path, "db", "status", url=pg_url)
    assert status.returncode == 1
    assert "has no agentguard schema; run `agentguard db upgrade`" in status.stderr

    first = agentguard(tmp_path, "db", "upgrade", url=pg_url)
    assert first.returncode == 0, first.stderr
    assert f"schema created at version {SCHEMA_VERSION}" in first.stdout
    again = agentguard(tmp_path, "db", "upgrade", "--json", url=pg_url)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["from_version"], report["version"]) == (SCHEMA_VERSION, SCHEMA_VERSION)

    store = PostgresStore(pg_url)
    store.audit_append({"n": 1}, at=START)
    store.consume("k", START + 60, now=START)
    store.revoke("link", "L1", reason="r", at=START)
    store.close()
    shown = agentguard(tmp_path, "db", "status", "--json", url=pg_url)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["version"] == SCHEMA_VERSION
    assert doc["counts"]["audit entries"] == 1
    assert doc["counts"]["nonces"] == 1
    assert doc["counts"]["revocations"] == 1
    assert doc["counts"]["approvals"] == 0
    text = agentguard(tmp_path, "db", "status", url=pg_url)
    assert "audit entries: 1" in text.stdout
    for run in (status, first, again, shown, text):
        assert pg_cluster.password not in run.stdout + run.stderr
        assert "Traceback" not in run.stderr


def test_db_upgrade_refuses_a_newer_schema_and_leaves_it(pg_url: str, tmp_path: Path) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE ag_meta SET value = '7' WHERE key = 'schema_version'")
    run = agentguard(tmp_path, "db", "upgrade", url=pg_url)
    assert run.returncode == 1
    assert "uses store schema version 7" in run.stderr
    assert "upgrade agentguard" in run.stderr
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT value FROM ag_meta WHERE key = 'schema_version'").fetchone()
    assert row == ("7",)


def test_db_reads_storage_url_from_the_policy_with_variables(
    pg_url: str, pg_cluster: Cluster, tmp_path: Path
) -> None:
    configured = pg_url.replace(pg_cluster.password, "${PG_SECRET}")
    (tmp_path / "agentguard.yaml").write_text(f"version: 1\nstorage:\n  url: '{configured}'\n")
    run = agentguard(tmp_path, "db", "upgrade", extra={"PG_SECRET": pg_cluster.password})
    assert run.returncode == 0, run.stderr
    assert "schema created" in run.stdout
    assert pg_cluster.password not in run.stdout + run.stderr
    unset = agentguard(tmp_path, "db", "status")
    assert unset.returncode == 1
    assert "environment variable PG_SECRET is not set" in unset.stderr


def test_db_without_a_url_says_what_to_set(tmp_path: Path) -> None:
    run = agentguard(tmp_path, "db", "status")
    assert run.returncode == 1
    assert f"no database URL: set {DATABASE_URL_ENV} or storage.url" in run.stderr


def test_db_with_a_wrong_password_names_it_without_showing_it(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    wrong = "not-the-password-42"
    run = agentguard(tmp_path, "db", "status", url=pg_cluster.url(password=wrong))
    assert run.returncode == 1
    assert "refused the user name or password" in run.stderr
    assert wrong not in run.stdout + run.stderr


def test_agentguard_revoke_writes_to_the_shared_database(
    pg_url: str, pg_cluster: Cluster, tmp_path: Path
) -> None:
    """A revocation from the CLI on one machine is in the database every guard reads."""
    assert agentguard(tmp_path, "init", "--org", "org:acme", url=pg_url).returncode == 0
    run = agentguard(tmp_path, "revoke", "--principal", "agent:bot", "--reason", "lost", url=pg_url)
    assert run.returncode == 0, run.stderr
    assert pg_cluster.password not in run.stdout + run.stderr
    store = PostgresStore(pg_url)
    assert [(r.kind, r.value, r.reason) for r in store.revocations()] == [
        ("principal", "agent:bot", "lost")
    ]
    store.close()
    assert not (tmp_path / ".agentguard" / "state.db").exists()


def test_db_commands_in_process(
    pg_url: str, pg_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same commands through Typer's runner (so the suite's coverage sees them)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)
    runner = CliRunner()
    created = runner.invoke(app, ["db", "upgrade"])
    assert created.exit_code == 0, created.output
    assert "schema created" in created.output
    same = runner.invoke(app, ["db", "upgrade"])
    assert "nothing to do" in same.output
    shown = runner.invoke(app, ["db", "status"])
    assert shown.exit_code == 0, shown.output
    assert f"schema version: {SCHEMA_VERSION}" in shown.output
    assert "approvals: 0" in shown.output
    assert "tool pins: 0" in shown.output
    for result in (created, same, shown):
        assert pg_cluster.password not in result.output
    monkeypatch.delenv(DATABASE_URL_ENV)
    missing = runner.invoke(app, ["db", "upgrade"])
    assert missing.exit_code == 1
