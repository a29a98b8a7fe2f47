"""Self-service subscribers in the store: the rule for an address in both the config and the
store, the run and the send-time check honouring them, and the CLI (list, add/set/remove
--store, import, export)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from click.testing import Result
from test_engine import run_with_a_server_on, write

from conftest import (
    ENV,
    NOW,
    SmtpServer,
    base_config,
    config_for,
    free_port,
    go,
    invoke_cli,
    toml_text,
)
from digest_mailer.audience import everyone, members
from digest_mailer.config import load_config
from digest_mailer.models import Status
from digest_mailer.store import Ledger
from digest_mailer.store.selfservice import SelfService, StoredSubscriber
from digest_mailer.store_target import StoreTarget


def invoke(*args: str) -> Result:
    return invoke_cli(*args, env=ENV)


def store_of(tmp_path: Path) -> SelfService:
    return SelfService.at(tmp_path / "state.sqlite3")


def put(tmp_path: Path, *subs: StoredSubscriber) -> None:
    with store_of(tmp_path) as store:
        for s in subs:
            store.put(s, NOW)


def test_an_address_in_both_the_config_keeps_whether_the_override_decides_what(
        tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path, subscribers=[
        {"email": "Ada@example.org", "name": "Ada", "topics": ["diffusion"], "max_papers": 3},
        {"email": "grace@example.org", "topics": ["speech"], "pause": True}])))
    put(tmp_path,
        StoredSubscriber("ada@example.org", "override", "web", name="ignored",
                         topics=("robotics",), frequency="weekly", weekday=4),
        StoredSubscriber("grace@example.org", "override", "web", topics=("audio",)),
        StoredSubscriber("new@example.org", "store", "signup", topics=("agents",)),
        # An override whose config entry the operator removed mails nobody.
        StoredSubscriber("gone@example.org", "override", "web", topics=("x",)))
    config = load_config(path)
    found = {m.subscriber.key: m for m in members(config)}
    assert set(found) == {"ada@example.org", "grace@example.org", "new@example.org"}
    ada = found["ada@example.org"]
    assert ada.source == "config+override"
    assert (ada.subscriber.name, ada.subscriber.max_papers) == ("Ada", 3)  # the operator's
    assert ada.subscriber.topics == ("robotics",)  # theirs
    assert (ada.subscriber.frequency, ada.subscriber.weekday) == ("weekly", 4)
    assert found["grace@example.org"].subscriber.paused  # the operator's pause holds
    assert found["new@example.org"].source == "store"
    assert found["new@example.org"].subscriber.max_papers == config.newsletter.max_papers
    listing = invoke("subscribers", "list", "--config", str(path))
    assert listing.exit_code == 0
    assert "Ada@example.org (Ada)  [config, with their own override, weekly on fri" in \
        listing.stdout
    assert "new@example.org  [store (signup), daily" in listing.stdout
    assert "3 subscriber(s) (2 in the config, 1 in the store, 2 overridden)" in listing.stdout
    as_json = json.loads(invoke("subscribers", "list", "--json", "--config",
                                str(path)).stdout)
    assert [(s["email"], s["source"]) for s in as_json] == [
        ("Ada@example.org", "config+override"), ("grace@example.org", "config+override"),
        ("new@example.org", "store")]


def test_a_run_mails_store_subscribers_and_explain_and_history_show_them(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    path = config_for(tmp_path, smtp_server, subscribers=[
        {"email": "ada@example.org", "topics": ["diffusion"]}])
    put(tmp_path, StoredSubscriber("self@example.org", "store", "signup", topics=("diffusion",)),
        StoredSubscriber("paused@example.org", "store", "signup", topics=("diffusion",),
                         paused=True))
    report = go(path)
    got = {o.email: o.status for o in report.outcomes}
    assert got == {"ada@example.org": Status.SENT, "self@example.org": Status.SENT,
                   "paused@example.org": Status.PAUSED}
    assert len(smtp_server.handler.to("self@example.org")) == 1
    explained = invoke("explain", "--config", str(path), "--to", "self@example.org",
                       "--date", str(NOW.date()))
    assert explained.exit_code == 0, explained.stderr
    assert "Fast Image Diffusion Sampling\n         already sent on" in explained.stdout
    history = invoke("history", "--config", str(path), "--to", "self@example.org")
    assert history.exit_code == 0 and "self@example.org" in history.stdout


def test_the_send_time_check_honours_the_store(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: every message waits in the outbox
    path = write(tmp_path, port, [{"email": "cfg@example.org"}])
    put(tmp_path, StoredSubscriber("s1@example.org", "store", "import"),
        StoredSubscriber("s2@example.org", "store", "import"),
        StoredSubscriber("s3@example.org", "store", "import"))
    assert {o.status for o in go(path).outcomes} == {Status.PENDING}
    # Between the runs: one pauses herself, one is removed, the config's subscriber pauses
    # through an override.
    assert invoke("subscribers", "set", "--store", "--pause", "s1@example.org",
                  "--config", str(path)).exit_code == 0
    assert invoke("subscribers", "remove", "--store", "s2@example.org",
                  "--config", str(path)).exit_code == 0
    assert invoke("subscribers", "set", "--store", "--pause", "cfg@example.org",
                  "--config", str(path)).exit_code == 0
    report, handler = run_with_a_server_on(port, path)
    left = {o.email: o for o in report.outcomes[:4]}
    assert left["s1@example.org"].status is Status.CANCELLED
    assert "paused (by their own preferences)" in left["s1@example.org"].detail
    assert left["s2@example.org"].status is Status.CANCELLED
    assert "no longer a subscriber" in left["s2@example.org"].detail
    assert left["cfg@example.org"].status is Status.CANCELLED
    assert left["s3@example.org"].status is Status.SENT
    assert [r.rcpt_tos for r in handler.received] == [["s3@example.org"]]


def test_add_set_remove_with_store(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path)))
    before = path.read_bytes()
    c = str(path)
    assert invoke("subscribers", "add", "--store", "x@example.org", "--topic", "agents",
                  "--config", c).stdout == "added x@example.org to the store\n"
    again = invoke("subscribers", "add", "--store", "X@example.org", "--config", c)
    assert again.exit_code == 1
    assert again.stderr.startswith("Error: X@example.org is already in the store")
    in_config = invoke("subscribers", "add", "--store", "ada@example.org", "--config", c)
    assert in_config.stderr.startswith("Error: ada@example.org is a subscriber in the config")
    bad = invoke("subscribers", "add", "--store", "nope@", "--config", c)
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: nope@: email:")
    assert invoke("subscribers", "set", "--store", "x@example.org", "--frequency", "weekly",
                  "--weekday", "tue", "--config", c).exit_code == 0
    assert invoke("subscribers", "set", "--store", "ada@example.org", "--topic", "robots",
                  "--config", c).stdout == "changed ada@example.org in their override\n"
    subs = {s.key: s for s in everyone(load_config(path))}
    assert (subs["x@example.org"].frequency, subs["x@example.org"].weekday) == ("weekly", 1)
    assert subs["x@example.org"].topics == ("agents",)
    assert subs["ada@example.org"].topics == ("robots",)
    assert invoke("subscribers", "remove", "--store", "ada@example.org", "--config",
                  c).stdout == ("dropped ada@example.org's override: the config's entry "
                                "applies again\n")
    assert {s.key: s for s in everyone(load_config(path))}["ada@example.org"].topics == \
        ("diffusion",)
    assert path.read_bytes() == before  # the operator's file is never touched by --store


def rows_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=["email", "name", "topics", "frequency", "weekday",
                                        "paused"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def test_import_export_round_trip_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path)))
    c = str(path)
    with Ledger.open(tmp_path / "state.sqlite3") as ledger:
        ledger.suppress("left@example.org", "unsubscribed", NOW)
    data = tmp_path / "in.csv"
    data.write_text(rows_csv([
        {"email": "a@example.org", "name": "Zoë Ä", "topics": "diffusion; world models",
         "frequency": "weekly", "weekday": "fri", "paused": "false"},
        {"email": "b@example.org", "topics": "", "paused": "true"},
        {"email": "ada@example.org", "topics": "x"},
        {"email": "left@example.org", "topics": "x"}]), encoding="utf-8")
    first = invoke("subscribers", "import", str(data), "--config", c)
    assert first.exit_code == 0, first.stderr
    assert "skipped line 4: ada@example.org: in the config" in first.stdout
    assert "skipped line 5: left@example.org: unsubscribed on 2025-06-02" in first.stdout
    assert "4 row(s): 2 added, 0 updated, 2 skipped" in first.stdout
    second = invoke("subscribers", "import", str(data), "--config", c)
    assert "4 row(s): 0 added, 0 updated, 4 skipped" in second.stdout
    assert "skipped line 2: a@example.org: unchanged" in second.stdout
    out = tmp_path / "out.csv"
    assert invoke("subscribers", "export", "--out", str(out), "--config", c).exit_code == 0
    exported = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["email"], r["name"], r["topics"], r["frequency"], r["weekday"], r["paused"])
            for r in exported] == [
        ("a@example.org", "Zoë Ä", "diffusion;world models", "weekly", "fri", "false"),
        ("b@example.org", "", "", "daily", "mon", "true")]
    # The export imported elsewhere gives the same subscribers.
    other = tmp_path / "other"
    other.mkdir()
    path2 = other / "c.toml"
    path2.write_text(toml_text(base_config(other)))
    assert "2 added" in invoke("subscribers", "import", str(out), "--config",
                               str(path2)).stdout
    assert [s for s in everyone(load_config(path2)) if s.key.startswith(("a@", "b@"))] == \
        [s for s in everyone(load_config(path)) if s.key.startswith(("a@", "b@"))]
    # A changed row is an update.
    out.write_text(out.read_text(encoding="utf-8").replace("weekly,fri", "daily,mon"),
                   encoding="utf-8")
    assert "1 updated, 1 skipped" in invoke("subscribers", "import", str(out), "--config",
                                            c).stdout


def test_a_malformed_csv_names_each_bad_row_and_imports_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path)))
    data = tmp_path / "bad.csv"
    data.write_text("email,topics,frequency,paused\n"
                    "good@example.org,agents,daily,false\n"
                    "nope@,agents,daily,false\n"
                    "x@example.org,agents,hourly,false\n"
                    "y@example.org,agents,daily,maybe\n"
                    "GOOD@example.org,x,daily,false\n"
                    "z@example.org,a,daily,false,extra\n", encoding="utf-8")
    result = invoke("subscribers", "import", str(data), "--config", str(path))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"Error: {data}: line 3: email: ")
    assert lines[1].startswith(f"Error: {data}: line 4: frequency: ")
    assert lines[2] == f"Error: {data}: line 5: paused: 'maybe' is not true or false"
    assert lines[3] == f"Error: {data}: line 6: GOOD@example.org is already on line 2"
    assert lines[4] == f"Error: {data}: line 7: more cells than the header has"
    assert lines[5].startswith("Hint: 5 bad row(s): nothing was imported")
    assert [s.key for s in everyone(load_config(path))] == [
        "ada@example.org", "grace@example.org", "edsger@example.org"]
    header = tmp_path / "header.csv"
    header.write_text("mail,topics\nx@example.org,a\n")
    wrong = invoke("subscribers", "import", str(header), "--config", str(path))
    assert wrong.stderr.splitlines()[0] == \
        f"Error: {header}: line 1: no 'email' column in the header row"


def test_check_warns_when_the_topics_link_cannot_reach_the_service(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(
        tmp_path, unsubscribe={"url": "https://papers.example.org/u?t={token}"})))
    result = invoke("check", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert ("warning: unsubscribe.url does not end with {token}: the digests' 'Change your "
            "topics' link (that URL + /topics) will not reach `digest-mailer web`"
            ) in result.stdout.splitlines()
    path.write_text(toml_text(base_config(tmp_path)))
    assert "does not end with {token}" not in invoke("check", "--config", str(path)).stdout


def test_the_send_time_check_sees_store_changes_made_during_a_run(tmp_path: Path) -> None:
    from digest_mailer.truth import STORE_LOOK_SECONDS, Roster, Truth

    put(tmp_path, StoredSubscriber("s@example.org", "store", "signup"))
    state = tmp_path / "state.sqlite3"
    truth = Truth(Roster.of(None, [("cfg@example.org", False)], store=StoreTarget.sqlite(state)))
    with Ledger.open(state) as ledger:
        truth.refresh()
        assert truth.forbidden("cfg@example.org", ledger) is None
        assert truth.forbidden("s@example.org", ledger) is None
        assert truth.forbidden("nobody@example.org", ledger) == \
            "no longer a subscriber in the config nor in the store"
        from datetime import UTC, datetime

        with store_of(tmp_path) as store:  # the web service, meanwhile
            store.put(StoredSubscriber("cfg@example.org", "override", "web", paused=True),
                      datetime.now(UTC))
            store.remove("s@example.org")
        time.sleep(STORE_LOOK_SECONDS + 0.1)
        truth.refresh()
        assert truth.forbidden("cfg@example.org", ledger) == \
            "paused (by their own preferences)"
        assert truth.forbidden("s@example.org", ledger) == \
            "no longer a subscriber in the config nor in the store"


def test_unconfirmed_sign_ups_are_forgotten_after_30_days(tmp_path: Path) -> None:
    from datetime import timedelta

    with store_of(tmp_path) as store:
        store.request("old@example.org", {"topics": ["x"]}, "n1", NOW, timedelta(hours=1))
        store.request("kept@example.org", {}, "n2", NOW, timedelta(hours=1))
        store.confirm("kept@example.org", "n2", NOW, in_config=False)
        later = NOW + timedelta(days=31)
        store.request("new@example.org", {}, "n3", later, timedelta(hours=1))
        assert store.pending("old@example.org") is None
        assert store.pending("kept@example.org") is not None  # confirmed: counted in status
        assert store.pending("new@example.org") is not None
