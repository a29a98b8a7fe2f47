"""The command line: exit codes and the exact `Error:` lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from conftest import (
    ENV,
    SAMPLE,
    SmtpServer,
    base_config,
    free_port,
    invoke_cli,
    local_smtp,
    toml_text,
)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return invoke_cli(*args, env=env)


def test_check_a_valid_config(write_config: Callable[..., Path]) -> None:
    path = write_config()
    result = invoke("check", "--config", str(path))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: OK"
    assert "subscribers: 3 (3 with topic or author filters, 0 taking every paper)" in lines
    assert any(line.startswith("warning: $DIGEST_UNSUBSCRIBE_SECRET is not set") for line in lines)


def test_check_an_invalid_config_lists_every_problem(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["subscribers"][2]["email"] = "ada@"
    doc["subscribers"][1]["topcis"] = ["x"]
    path = tmp_path / "config.toml"
    path.write_text(toml_text(doc))
    result = invoke("check", "--config", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Error: {path}: subscribers[1].topcis: unknown key (did you mean 'topics'?)",
        f"Error: {path}: subscribers[2].email: 'ada@' is not an email address (There must be "
        "something after the @-sign.)",
        "Hint: 2 problems above; every key is documented in config.example.toml",
    ]


def test_config_from_the_environment_then_the_working_directory(
        write_config: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(name="elsewhere.toml")
    assert invoke("check", env={"DIGEST_MAILER_CONFIG": str(path)}).exit_code == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIGEST_MAILER_CONFIG", raising=False)
    result = invoke("check")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "Error: digest-mailer.toml: no such file"


def test_usage_errors_exit_2(write_config: Callable[..., Path]) -> None:
    path = str(write_config())
    bad_date = invoke("run", "--config", path, "--date", "2025-13-01")
    assert bad_date.exit_code == 2 and "'2025-13-01' is not a date like 2025-06-02" in \
        bad_date.stderr
    assert invoke("run", "--config", path, "--source-kind", "rss").exit_code == 2
    assert invoke("preview", "--config", path).exit_code == 2  # --to is required
    assert invoke("frobnicate").exit_code == 2


def test_dry_run_prints_a_report(write_config: Callable[..., Path], tmp_path: Path) -> None:
    path = write_config()
    result = invoke("run", "--config", str(path), "--dry-run", "--date", "2025-06-02",
                    "--out", str(tmp_path / "pv"))
    assert result.exit_code == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "Run for 2025-06-02 (dry run: nothing sent, ledger untouched)"
    assert out[1] == f"Papers fetched: 7 from {SAMPLE} (1 item(s) skipped)"
    assert out[2] == f"  skipped: {SAMPLE} item 8: no arXiv id (id=None)"
    assert out[3].split() == ["ada@example.org", "written", "2", "paper(s)", "->",
                              str(tmp_path / "pv" / "2025-06-02" / "ada_at_example.org.eml")]
    assert out[5].split() == ["edsger@example.org", "no", "match", "no", "paper", "matches"]
    assert out[6] == "2 email(s) written, 1 with nothing to send, 0 failed"
    assert out[7] == f"Preview: {tmp_path / 'pv' / '2025-06-02' / 'index.html'}"
    assert not (tmp_path / "state.sqlite3").exists()


def test_run_sends_and_a_second_run_sends_nothing(tmp_path: Path,
                                                  smtp_server: SmtpServer) -> None:
    doc = base_config(tmp_path, smtp=local_smtp(smtp_server.port))
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    first = invoke("run", "--config", str(path), env=ENV)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.splitlines()[-1] == "2 email(s) sent, 1 with nothing to send, 0 failed"
    second = invoke("run", "--config", str(path), env=ENV)
    assert second.stdout.splitlines()[-1] == "0 email(s) sent, 3 with nothing to send, 0 failed"
    assert len(smtp_server.handler.received) == 2


def test_run_errors_are_one_line_with_a_hint(write_config: Callable[..., Path],
                                             tmp_path: Path) -> None:
    path = str(write_config())
    no_secret = invoke("run", "--config", path, env={"DIGEST_UNSUBSCRIBE_SECRET": ""})
    assert no_secret.exit_code == 1
    lines = no_secret.stderr.splitlines()
    assert lines[0] == ("Error: $DIGEST_UNSUBSCRIBE_SECRET is not set: it signs the one-click "
                        "unsubscribe links")
    assert lines[1].startswith("Hint: export DIGEST_UNSUBSCRIBE_SECRET=")
    missing = invoke("run", "--config", path, "--dry-run", "--source", str(tmp_path / "x.json"))
    assert missing.exit_code == 1
    assert missing.stderr.splitlines()[0] == f"Error: {tmp_path / 'x.json'}: no such file"
    nobody = invoke("preview", "--config", path, "--to", "nobody@example.org")
    assert nobody.exit_code == 1
    assert nobody.stderr.splitlines()[0] == (f"Error: nobody@example.org: not a subscriber in "
                                             f"{path} nor in the store")


def test_an_unreachable_smtp_server_fails_the_run(tmp_path: Path) -> None:
    doc = base_config(tmp_path, smtp=local_smtp(free_port(), timeout=2))
    doc["delivery"].update({"retry_attempts": 1, "retry_delay": 0.05})
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    result = invoke("run", "--config", str(path), env=ENV)
    assert result.exit_code == 1
    # The cause once, then what is now pending for whom (edsger had nothing to get).
    assert result.stdout.count("Connection refused") == 1
    assert result.stdout.count(" pending ") == 2 and "no match" in result.stdout
    assert result.stderr.splitlines()[-2] == \
        "Error: 2 of 3 subscriber(s) did not get their email"  # edsger had nothing to get


def test_preview_writes_one_subscribers_email(write_config: Callable[..., Path],
                                              tmp_path: Path) -> None:
    path = str(write_config())
    result = invoke("preview", "--config", path, "--to", "grace@example.org", "--out",
                    str(tmp_path / "pv"), "--date", "2025-06-02")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "pv" / "2025-06-02").glob("*.html")) == \
        ["grace_at_example.org.html", "index.html"]


def test_python_dash_m_and_version(tmp_path: Path) -> None:
    env = {**os.environ, "DIGEST_MAILER_CONFIG": str(tmp_path / "none.toml")}
    proc = subprocess.run([sys.executable, "-m", "digest_mailer", "check"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == f"Error: {tmp_path / 'none.toml'}: no such file"
    assert "Traceback" not in proc.stderr
    version = subprocess.run([sys.executable, "-m", "digest_mailer", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("digest-mailer, version ")


def test_source_url_on_the_command_line_uses_the_configured_kind(
        write_config: Callable[..., Path], http_server: Any) -> None:
    body = SAMPLE.read_bytes()
    http_server.routes["/feed"] = lambda req: (200, {}, body if req.query.get("p") == "0"
                                               else b"[]")
    result = invoke("run", "--config", str(write_config()), "--dry-run", "--date",
                    "2025-06-02", "--source", http_server.base + "/feed")
    assert result.exit_code == 0, result.stderr
    assert f"Papers fetched: 7 from {http_server.base}/feed" in result.stdout
    assert {r.query["date"] for r in http_server.requests} == {"2025-06-01", "2025-06-02"}


def test_json_report_history_explain_and_status(tmp_path: Path,
                                                smtp_server: SmtpServer) -> None:
    import json

    doc = base_config(tmp_path, smtp=local_smtp(smtp_server.port))
    path = str(tmp_path / "c.toml")
    Path(path).write_text(toml_text(doc))
    result = invoke("run", "--config", path, "--json", "--date", "2025-06-02", env=ENV)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["delivered"] == 2 and report["fetched"] == 7 and not report["dry_run"]
    ada = next(s for s in report["subscribers"] if s["email"] == "ada@example.org")
    assert ada["status"] == "sent" and ada["papers"] == 2

    history = json.loads(invoke("history", "--config", path, "--json").stdout)
    assert [h["to"] for h in history] == ["ada@example.org", "grace@example.org"]
    assert history[0]["message_id"] == ada["message_id"]
    by_paper = invoke("history", "--config", path, "--paper",
                      "https://arxiv.org/abs/2506.00105v2")
    assert "grace@example.org" in by_paper.stdout and "ada@" not in by_paper.stdout
    assert by_paper.stdout.splitlines()[-1] == "1 email(s) sent"
    later = invoke("history", "--config", path, "--since", "2999-01-01")
    assert later.stdout.strip() == "0 email(s) sent"
    bad = invoke("history", "--config", path, "--paper", "nonsense")
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: 'nonsense' is not an arXiv id")

    explained = invoke("explain", "--config", path, "--to", "ada@example.org").stdout
    assert "already sent on" in explained and "no topic or author matched" in explained
    assert explained.splitlines()[-1] == "0 of 7 paper(s) would be sent to ada@example.org"

    status = json.loads(invoke("status", "--config", path, "--json").stdout)
    assert status["deliveries"] == 2
    assert status["subscribers"] == {"active": 3, "paused": 0, "suppressed": 0}
    assert status["outbox"] == {"waiting": 0}  # a run's sent rows go at its end
    assert status["last_runs"][-1]["outcome"] == "ok" and status["next_run"]
    text = invoke("status", "--config", path).stdout
    assert "Subscribers: 3 active, 0 paused, 0 suppressed" in text and "Last runs:" in text


def test_subscribers_commands(write_config: Callable[..., Path]) -> None:
    import json

    path = str(write_config())
    added = invoke("subscribers", "add", "new@example.org", "--config", path, "--topic",
                   "agents", "--topic", "speech recognition", "--frequency", "weekly",
                   "--weekday", "fri")
    assert added.exit_code == 0 and added.stdout.strip() == "added new@example.org"
    assert invoke("subscribers", "set", "ada@example.org", "--config", path,
                  "--pause").exit_code == 0
    listed = json.loads(invoke("subscribers", "list", "--config", path, "--json").stdout)
    new = next(s for s in listed if s["email"] == "new@example.org")
    assert new["topics"] == ["agents", "speech recognition"] and new["weekday"] == "fri"
    assert next(s for s in listed if s["email"] == "ada@example.org")["paused"]
    text = invoke("subscribers", "list", "--config", path).stdout
    assert "ada@example.org (Ada)  [daily, max 20, PAUSED]  topics: diffusion" in text
    assert text.splitlines()[-1] == "4 subscriber(s), 1 paused, 0 suppressed"
    gone = invoke("subscribers", "remove", "grace@example.org", "--config", path)
    assert gone.stdout.strip() == "removed grace@example.org"
    again = invoke("subscribers", "remove", "grace@example.org", "--config", path)
    assert again.exit_code == 1
    assert again.stderr.splitlines()[0] == f"Error: {path}: grace@example.org is not a subscriber"


def test_subscriber_flags_that_would_be_ignored_are_refused(
        write_config: Callable[..., Path]) -> None:
    path = str(write_config())
    weekday = invoke("subscribers", "add", "w@example.org", "--config", path, "--weekday", "fri")
    assert weekday.exit_code == 1
    assert weekday.stderr.splitlines() == [
        f"Error: {path}: --weekday fri applies to weekly subscribers only, and this one is "
        "daily", "Hint: add --frequency weekly"]
    cleared = invoke("subscribers", "set", "ada@example.org", "--config", path, "--clear-topics")
    assert cleared.exit_code == 0 and cleared.stdout == "updated ada@example.org: cleared topics\n"
    listed = json.loads(invoke("subscribers", "list", "--config", path, "--json").stdout)
    assert next(s for s in listed if s["email"] == "ada@example.org")["topics"] == []


def test_hints_point_at_what_was_typed(write_config: Callable[..., Path]) -> None:
    path = str(write_config())
    nobody = invoke("preview", "--config", path, "--to", "nobody@example.org")
    assert nobody.stderr.splitlines()[1] == "Hint: see `digest-mailer subscribers list`"
    bad = invoke("subscribers", "add", "bad@", "--config", path)
    assert bad.exit_code == 1
    assert bad.stderr.splitlines() == [
        "Error: 'bad@' is not an email address (There must be something after the @-sign.)",
        "Hint: check the address given on the command line"]
    empty = invoke("subscribers", "set", "ada@example.org", "--config", path, "--topic", " ")
    assert empty.exit_code == 1
    assert empty.stderr.splitlines()[0].endswith(
        "subscribers[0].topics: an empty string matches nothing; remove it")
    assert empty.stderr.splitlines()[1] == ("Hint: nothing was written; check the values given "
                                            "on the command line")
    assert "config.example.toml" not in bad.stderr + empty.stderr
