"""A ledger that cannot be used: every command says so in one `Error:` line with a hint that
checks and restores it (never "start a new file", which would send everything again)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from conftest import ENV, SmtpServer, base_config, invoke_cli, local_smtp, toml_text


def invoke(*args: str) -> tuple[int, str, str]:
    result = invoke_cli(*args, env=ENV)
    return result.exit_code, result.stdout, result.stderr


def config(tmp_path: Path, smtp: SmtpServer) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(
        tmp_path, smtp=local_smtp(smtp.port, connections=0))))
    return path


def damage(ledger: Path) -> None:
    """Garbage over every page but the first: the header reads, the tables do not."""
    conn = sqlite3.connect(ledger)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = ledger.read_bytes()
    ledger.write_bytes(data[:page] + b"\x5a" * (len(data) - page))


@pytest.mark.parametrize("command", [["run", "--date", "2025-06-02"], ["status"], ["history"],
                                     ["subscribers", "list"]])
def test_a_damaged_ledger_is_one_error_line_with_a_restoring_hint(
        tmp_path: Path, smtp_server: SmtpServer, command: list[str]) -> None:
    path = config(tmp_path, smtp_server)
    code, out, err = invoke("run", "--config", str(path), "--date", "2025-06-02")
    assert code == 0, (out, err)
    damage(tmp_path / "state.sqlite3")
    code, out, err = invoke(*command, "--config", str(path))
    assert code == 1, (out, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "state.sqlite3" in errors[0], err
    assert "PRAGMA integrity_check" in err and ".recover" in err and "backup" in err
    assert "new file" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_state_folder_is_one_error_line(tmp_path: Path,
                                                    smtp_server: SmtpServer) -> None:
    path = config(tmp_path, smtp_server)
    state = tmp_path / "state"
    state.mkdir()
    text = path.read_text().replace(str(tmp_path / "state.sqlite3"),
                                    str(state / "state.sqlite3"))
    path.write_text(text)
    state.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, _, err = invoke("run", "--config", str(path), "--date", "2025-06-02")
    finally:
        state.chmod(stat.S_IRWXU)
    assert code == 1 and "Traceback" not in err
    assert err.startswith("Error: ") and "writable" in err


def test_a_state_path_under_a_file_is_one_error_line(tmp_path: Path,
                                                     smtp_server: SmtpServer) -> None:
    # What root sees for a folder it cannot create: the same path as the read-only case.
    path = config(tmp_path, smtp_server)
    (tmp_path / "blocker").write_text("a file, not a folder")
    path.write_text(path.read_text().replace(str(tmp_path / "state.sqlite3"),
                                             str(tmp_path / "blocker" / "state.sqlite3")))
    code, _, err = invoke("run", "--config", str(path), "--date", "2025-06-02")
    assert code == 1 and "Traceback" not in err, err
    # The preflight refuses it before the run takes its lock; the lock says it too.
    assert err.startswith("Error: ") and ("cannot be created" in err or
                                          "cannot create the run lock" in err), err
