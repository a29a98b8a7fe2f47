"""`digest-mailer db ...` and `status` on the ledger: upgrade, current, prune, backup, and the
copy of a SQLite ledger into PostgreSQL (a round trip through real runs)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from test_migrations import old_ledger

from conftest import (
    ENV,
    SmtpServer,
    base_config,
    fresh_pg_database,
    invoke_cli,
    local_smtp,
    toml_text,
)
from digest_mailer.store.schema import HEAD


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = invoke_cli(*args, env={**ENV, **(env or {})})
    return result.exit_code, result.stdout, result.stderr


def config(tmp_path: Path, smtp: SmtpServer, **state: str) -> Path:
    path = tmp_path / "c.toml"
    doc = base_config(tmp_path, smtp=local_smtp(smtp.port, connections=0))
    doc["state"].update(state)
    path.write_text(toml_text(doc))
    return path


def test_db_current_and_upgrade_on_a_ledger_from_main(tmp_path: Path,
                                                      smtp_server: SmtpServer) -> None:
    path = config(tmp_path, smtp_server)
    code, out, _ = invoke("db", "current", "--config", str(path))
    assert code == 0 and "empty" in out
    old_ledger(tmp_path / "state.sqlite3")
    code, out, _ = invoke("db", "current", "--config", str(path))
    assert code == 0 and "schema 3, before Alembic" in out, out
    assert not list(tmp_path.glob("*.bak"))  # `current` changes nothing
    code, out, err = invoke("db", "upgrade", "--config", str(path))
    assert code == 0 and f"at revision {HEAD} (was schema 3" in out, (out, err)
    assert len(list(tmp_path.glob("state.sqlite3.before-*.bak"))) == 1
    code, out, _ = invoke("db", "current", "--config", str(path), "--json")
    assert json.loads(out)["current"] is True


def test_backup_is_a_consistent_copy_and_never_overwrites(tmp_path: Path,
                                                          smtp_server: SmtpServer) -> None:
    path = config(tmp_path, smtp_server)
    code, _, err = invoke("run", "--config", str(path), "--date", "2025-06-02")
    assert code == 0, err
    code, out, err = invoke("db", "backup", "--config", str(path), str(tmp_path / "b.sqlite3"))
    assert code == 0 and "b.sqlite3" in out, err
    conn = sqlite3.connect(tmp_path / "b.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    copied = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    conn.close()
    assert copied == len(smtp_server.handler.received) > 0
    code, _, err = invoke("db", "backup", "--config", str(path), str(tmp_path / "b.sqlite3"))
    assert code == 1 and err.startswith("Error: ") and "already exists" in err


def test_status_shows_the_size_and_the_policy_and_prune_runs(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = config(tmp_path, smtp_server, keep_history="30d", offer_margin="3d")
    assert invoke("run", "--config", str(path), "--date", "2025-06-02")[0] == 0
    code, out, _ = invoke("status", "--config", str(path))
    assert code == 0 and " MB (" in out.splitlines()[0]
    assert "Retention: sent emails and failures kept 30 days" in out
    assert "a paper they offered was in a feed in the last 10 days" in out
    code, out, _ = invoke("db", "prune", "--config", str(path), "--json")
    assert code == 0 and json.loads(out)["size_bytes"] > 0


def test_copy_into_postgresql_round_trip(tmp_path: Path, smtp_server: SmtpServer,
                                         pg_server: str) -> None:
    path = config(tmp_path, smtp_server)
    code, out, err = invoke("run", "--config", str(path), "--date", "2025-06-02")
    assert code == 0, (out, err)
    sent = len(smtp_server.handler.received)
    assert sent > 0
    code, before, _ = invoke("history", "--config", str(path), "--json")
    with fresh_pg_database(pg_server) as url:
        code, out, err = invoke("db", "copy", "--config", str(path), "--to", url)
        assert code == 0, err
        assert f'set [state] url = "{url}"' in out
        # A second copy into the same database is refused: it is no longer empty.
        code, _, err = invoke("db", "copy", "--config", str(path), "--to", url)
        assert code == 1 and "fills an empty ledger only" in err
        on_pg = config(tmp_path, smtp_server, url=url)
        code, after, _ = invoke("history", "--config", str(on_pg), "--json")
        assert json.loads(after) == json.loads(before)
        # The ledger on PostgreSQL knows what was sent: the same run sends nothing more.
        code, _, err = invoke("run", "--config", str(on_pg), "--date", "2025-06-02")
        assert code == 0, err
        assert len(smtp_server.handler.received) == sent
        # And new rows are numbered after the copied ones.
        code, _, err = invoke("subscribers", "unsuppress", "nobody@example.org", "--config",
                              str(on_pg))
        code, out, _ = invoke("status", "--config", str(on_pg), "--json")
        assert json.loads(out)["runs"] == 2


def test_an_unreachable_postgresql_ledger_is_one_error_line(tmp_path: Path,
                                                            smtp_server: SmtpServer) -> None:
    from conftest import free_port

    path = config(tmp_path, smtp_server, url=f"postgresql://digest@127.0.0.1:{free_port()}/d")
    for command in (["status"], ["history"], ["run", "--date", "2025-06-02"], ["db", "prune"]):
        code, _, err = invoke(*command, "--config", str(path))
        assert code == 1 and "Traceback" not in err, (command, err)
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "cannot connect to the ledger's PostgreSQL server" in \
            errors[0], (command, err)
        assert "Hint: check [state] url's host and port" in err
