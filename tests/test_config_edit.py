"""Subscriber edits keep the operator's file as it was outside the edited entry."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from digest_mailer.config import load_config
from digest_mailer.config_edit import (
    SubscriberChange,
    add_subscriber,
    remove_subscriber,
    set_subscriber,
)
from digest_mailer.errors import ConfigError


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "digest-mailer.toml"
    shutil.copy(REPO / "config.example.toml", path)
    path.chmod(0o640)
    return path


def entry_span(text: str, email: str) -> tuple[int, int]:
    """Where the [[subscribers]] table holding `email` starts and ends in the text."""
    at = text.index(f'email = "{email}"')
    start = text.rindex("[[subscribers]]", 0, at)
    nxt = text.find("[[subscribers]]", at)
    return start, (nxt if nxt != -1 else len(text))


def test_set_changes_only_that_entry(config: Path) -> None:
    before = config.read_text()
    set_subscriber(config, "grace@example.org",
                   SubscriberChange(topics=("speech", "audio"), pause=True))
    after = config.read_text()
    b0, b1 = entry_span(before, "grace@example.org")
    a0, a1 = entry_span(after, "grace@example.org")
    assert before[:b0] == after[:a0] and before[b1:] == after[a1:]
    assert 'topics = ["speech", "audio"]' in after[a0:a1] and "pause = true" in after[a0:a1]
    sub = next(s for s in load_config(config).subscribers_view() if s.email.startswith("grace"))
    assert sub.topics == ("speech", "audio") and sub.paused
    assert config.stat().st_mode & 0o777 == 0o640


def test_add_appends_and_remove_cuts_only_that_entry(config: Path) -> None:
    before = config.read_text()
    add_subscriber(config, "new@example.org", SubscriberChange(name="Neu", topics=("agents",)))
    added = config.read_text()
    assert added.startswith(before)
    assert 'email = "new@example.org"' in added[len(before):]
    remove_subscriber(config, "alan@example.org")
    removed = config.read_text()
    a0, a1 = entry_span(added, "alan@example.org")
    assert removed == added[:a0] + added[a1:]
    assert "# no topics and no authors: every paper" not in removed  # its comment went with it
    assert "# digest-mailer configuration." in removed


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: add_subscriber(p, "ADA@example.org", SubscriberChange()),
     "ADA@example.org is already a subscriber"),
    (lambda p: add_subscriber(p, "bad@", SubscriberChange()),
     "'bad@' is not an email address"),
    (lambda p: set_subscriber(p, "ada@example.org", SubscriberChange(topics=("",))),
     "subscribers[0].topics: an empty string matches nothing"),
    (lambda p: set_subscriber(p, "nobody@example.org", SubscriberChange(pause=True)),
     "nobody@example.org is not a subscriber"),
    (lambda p: remove_subscriber(p, "nobody@example.org"), "is not a subscriber"),
    (lambda p: set_subscriber(p, "ada@example.org", SubscriberChange()), "nothing to change"),
])
def test_a_bad_edit_leaves_the_file_untouched(config: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    before = config.read_bytes()
    with pytest.raises(ConfigError) as info:
        edit(config)
    assert message in " ".join(info.value.problems)
    assert config.read_bytes() == before
    assert [p.name for p in config.parent.iterdir()] == [config.name]  # no temp file left


# -- concurrency, symlinks, ownership, flags, layout, size --------------------------------

def test_concurrent_adds_all_survive(config: Path) -> None:
    """Ten `subscribers add` processes at once: each one's entry is in the file."""
    import subprocess
    import sys

    emails = [f"racer{n}@example.org" for n in range(10)]
    procs = [subprocess.Popen([sys.executable, "-m", "digest_mailer", "subscribers", "add",
                               email, "--config", str(config), "--topic", f"t{n}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for n, email in enumerate(emails)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    present = {s.email for s in load_config(config).subscribers_view()}
    assert set(emails) <= present
    assert len(present) == 5 + len(emails)


def test_a_symlinked_config_edits_its_target(config: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.toml"
    link.symlink_to(config)
    add_subscriber(link, "via-link@example.org", SubscriberChange())
    assert link.is_symlink() and link.resolve() == config.resolve()
    assert 'email = "via-link@example.org"' in config.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_owner_group_and_mode_are_kept(config: Path) -> None:
    os.chown(config, 65534, 65534)  # nobody:nogroup, as a service account would own it
    config.chmod(0o600)
    set_subscriber(config, "ada@example.org", SubscriberChange(pause=True))
    info = config.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (65534, 65534, 0o600)


def test_weekday_needs_weekly(config: Path) -> None:
    before = config.read_bytes()
    with pytest.raises(ConfigError, match="--weekday fri applies to weekly subscribers only"):
        add_subscriber(config, "w@example.org", SubscriberChange(weekday="fri"))
    with pytest.raises(ConfigError, match="this one is daily"):
        set_subscriber(config, "ada@example.org", SubscriberChange(weekday="fri"))
    assert config.read_bytes() == before
    set_subscriber(config, "ada@example.org", SubscriberChange(frequency="weekly", weekday="fri"))
    set_subscriber(config, "ada@example.org", SubscriberChange(weekday="tue"))  # weekly now
    ada = next(s for s in load_config(config).subscribers_view() if s.email.startswith("ada"))
    assert (ada.frequency, ada.weekday) == ("weekly", 1)
    set_subscriber(config, "ada@example.org", SubscriberChange(frequency="daily"))
    start, end = entry_span(config.read_text(), "ada@example.org")
    assert "weekday" not in config.read_text()[start:end]


def test_lists_can_be_cleared(config: Path) -> None:
    set_subscriber(config, "ada@example.org", SubscriberChange(clear=("topics",)))
    ada = next(s for s in load_config(config).subscribers_view() if s.email.startswith("ada"))
    assert ada.topics == ()
    with pytest.raises(ConfigError, match="contradict"):
        set_subscriber(config, "ada@example.org",
                       SubscriberChange(topics=("x",), clear=("topics",)))


def test_an_added_entry_has_a_blank_line_before_it(config: Path) -> None:
    before = config.read_text()
    add_subscriber(config, "new@example.org", SubscriberChange(topics=("agents",)))
    added = config.read_text()[len(before.rstrip("\n")):]
    assert added.startswith("\n\n[[subscribers]]\n")


def test_a_layout_the_text_edit_cannot_follow_is_edited_whole(
        config: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A `[[subscribers]]` line inside a multi-line string is not a table: the edit notices
    and redoes itself on the whole document."""
    import logging

    caplog.set_level(logging.INFO, logger="digest_mailer.config_edit")
    text = config.read_text().replace('topics = ["speech recognition", ',
                                      'topics = ["""speech\n[[subscribers]]\n""", ', 1)
    config.write_text(text)
    set_subscriber(config, "ada@example.org", SubscriberChange(pause=True))
    assert "editing the whole document" in caplog.text
    subs = {s.email: s for s in load_config(config).subscribers_view()}
    assert subs["ada@example.org"].paused
    assert subs["grace@example.org"].topics[0] == "speech [[subscribers]]"


def test_a_large_config_is_edited_without_parsing_it_whole(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At 100,000 subscribers tomlkit took 37 s and 937 MB to add one: only the edited entry
    goes through it now."""
    import logging
    import time

    caplog.set_level(logging.INFO, logger="digest_mailer.config_edit")
    path = tmp_path / "big.toml"
    head = (REPO / "config.example.toml").read_text().split("[[subscribers]]")[0]
    path.write_text(head + "".join(f'\n[[subscribers]]\nemail = "r{n}@example.org"\n'
                                   f'topics = ["t{n % 50}"]\n' for n in range(20_000)))
    started = time.monotonic()
    add_subscriber(path, "new@example.org", SubscriberChange(topics=("x",)))
    set_subscriber(path, "r19999@example.org", SubscriberChange(name="Last"))
    remove_subscriber(path, "r0@example.org")
    elapsed = time.monotonic() - started
    assert "editing the whole document" not in caplog.text
    subs = load_config(path).subscribers_view()
    assert len(subs) == 20_000 and subs[-1].email == "new@example.org"
    assert subs[-2].name == "Last" and subs[0].email == "r1@example.org"
    assert elapsed < 60  # the whole-document path takes minutes here


# -- hostile files and file systems --------------------------------------------------------------

def _cli(*args: str, preexec: Any = None) -> tuple[int, str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "digest_mailer", "subscribers", *args],
                          capture_output=True, text=True, preexec_fn=preexec, timeout=120,
                          cwd=REPO)
    return done.returncode, done.stdout + done.stderr


def _one_error(out: str, pattern: str) -> None:
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), out


def test_a_full_disk_leaves_the_file_as_it_was(config: Path) -> None:
    """The file size limit (RLIMIT_FSIZE) fails the write as a full disk does."""
    import resource
    import signal

    before = config.read_bytes()
    limit = len(before) - 10

    def full() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code, out = _cli("add", "new@example.org", "--config", str(config), preexec=full)
    assert code == 1
    _one_error(out, r"cannot write the edited copy beside it: File too large; nothing was "
                    r"changed")
    assert config.read_bytes() == before
    assert sorted(p.name for p in config.parent.iterdir()) == [config.name]


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system when root (who ignores permission bits), else a folder
    without write permission."""
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        shutil.copy(REPO / "config.example.toml", folder / "c.toml")
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"root cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        shutil.copy(REPO / "config.example.toml", folder / "c.toml")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_read_only_folder_is_one_error_line(read_only_folder: Path) -> None:
    config = read_only_folder / "c.toml"
    before = config.read_bytes()
    code, out = _cli("set", "ada@example.org", "--name", "Ada L", "--config", str(config))
    assert code == 1
    _one_error(out, r"cannot write the edited copy beside it: (Read-only file system|"
                    r"Permission denied); nothing was changed")
    assert config.read_bytes() == before


def test_a_symlink_loop_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "a.toml").symlink_to(tmp_path / "b.toml")
    (tmp_path / "b.toml").symlink_to(tmp_path / "a.toml")
    code, out = _cli("add", "new@example.org", "--config", str(tmp_path / "a.toml"))
    assert code == 1
    _one_error(out, r"a\.toml: cannot open: Too many levels of symbolic links")


def test_a_crlf_config_keeps_crlf(config: Path) -> None:
    config.write_bytes(config.read_bytes().replace(b"\n", b"\r\n"))
    add_subscriber(config, "new@example.org", SubscriberChange(name="N", topics=("x",)))
    set_subscriber(config, "ada@example.org", SubscriberChange(name="Ada L"))
    remove_subscriber(config, "grace@example.org")
    data = config.read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n")
    emails = [s.email for s in load_config(config).subscribers_view()]
    assert "new@example.org" in emails and "grace@example.org" not in emails


def test_removing_an_entry_keeps_the_comment_above_the_next(config: Path) -> None:
    text = config.read_text()
    at = text.index('email = "grace@example.org"')
    header = text.rindex("[[subscribers]]", 0, at)
    config.write_text(text[:header] + "# Grace: since 2024, asked for RL only\n"
                      + text[header:])
    before = load_config(config).subscribers_view()
    previous = before[[s.email for s in before].index("grace@example.org") - 1].email
    remove_subscriber(config, previous)
    assert "# Grace: since 2024, asked for RL only\n[[subscribers]]" in config.read_text()


def test_a_hand_edit_during_the_edit_is_never_lost(config: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock keeps our own edits apart, not an editor's: one saved between our read and
    our write is kept, and ours refused."""
    import tempfile

    real = tempfile.mkstemp

    def editor_saves_first(*args: Any, **kwargs: Any) -> Any:
        with config.open("a") as f:
            f.write("# saved by hand\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", editor_saves_first)
    with pytest.raises(ConfigError, match="changed while it was being edited"):
        add_subscriber(config, "new@example.org", SubscriberChange())
    assert config.read_text().endswith("# saved by hand\n")
    assert "new@example.org" not in config.read_text()


def test_mixed_concurrent_edits_all_land(config: Path) -> None:
    """add, set and remove from separate processes at once: every change is in the file."""
    import subprocess
    import sys

    commands = [["add", f"racer{n}@example.org", "--topic", f"t{n}"] for n in range(6)]
    commands += [["set", "ada@example.org", "--name", "Ada Lovelace"],
                 ["remove", "grace@example.org"],
                 ["set", "edsger@example.org", "--pause"]]
    existing = {s.email for s in load_config(config).subscribers_view()}
    commands = [c for c in commands if c[0] == "add" or c[1] in existing]
    procs = [subprocess.Popen([sys.executable, "-m", "digest_mailer", "subscribers", *c,
                               "--config", str(config)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for c in commands]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    subs = {s.email: s for s in load_config(config).subscribers_view()}
    assert {f"racer{n}@example.org" for n in range(6)} <= set(subs)
    for c in commands:
        if c[0] == "remove":
            assert c[1] not in subs
        elif c[0] == "set" and c[2] == "--name":
            assert subs[c[1]].name == "Ada Lovelace"
        elif c[0] == "set":
            assert subs[c[1]].paused
    assert config.stat().st_mode & 0o777 == 0o640


def test_an_inline_array_of_subscribers_is_refused_with_a_hint(config: Path) -> None:
    text = config.read_text()
    top = text.index("[[subscribers]]")
    inline = ('subscribers = [{email = "a@example.org", name = "A"}, # a comment\n'
              ' {email = "b@example.org"}]\n')
    config.write_text(inline + text[:top])
    before = config.read_bytes()
    edits: list[Callable[[], str]] = [
        lambda: add_subscriber(config, "new@example.org", SubscriberChange()),
        lambda: set_subscriber(config, "a@example.org", SubscriberChange(name="Z")),
        lambda: remove_subscriber(config, "b@example.org")]
    for edit in edits:
        with pytest.raises(ConfigError, match=r"subscribers: expected \[\[subscribers\]\] "
                                              r"tables") as e:
            edit()
        assert "write the `subscribers = [...]` array as tables" in str(e.value.hint)
    assert config.read_bytes() == before


def test_a_config_that_is_not_utf8_is_one_error_line(config: Path) -> None:
    config.write_bytes(config.read_bytes().replace(b"Ada", "Ad\xe9".encode("latin-1"), 1))
    before = config.read_bytes()
    code, out = _cli("add", "new@example.org", "--config", str(config))
    assert code == 1
    _one_error(out, r"cannot edit: 'utf-8' codec can't decode byte 0xe9")
    assert config.read_bytes() == before


def test_comments_inside_an_entry_survive_a_set(config: Path) -> None:
    text = config.read_text()
    at = text.index('email = "grace@example.org"')
    config.write_text(text[:at] + "# asked by phone, 2024-03-02\n" + text[at:].replace(
        'email = "grace@example.org"', 'email = "grace@example.org"  # work address', 1))
    set_subscriber(config, "grace@example.org", SubscriberChange(name="Grace H"))
    after = config.read_text()
    assert "# asked by phone, 2024-03-02\n" in after
    assert 'email = "grace@example.org"  # work address' in after
    assert load_config(config).subscribers_view()[
        [s.email for s in load_config(config).subscribers_view()].index(
            "grace@example.org")].name == "Grace H"


def test_a_fifo_in_the_config_s_place_is_one_error_line(tmp_path: Path) -> None:
    fifo = tmp_path / "digest-mailer.toml"
    os.mkfifo(fifo, 0o600)
    code, out = _cli("add", "new@example.org", "--config", str(fifo))  # timeout: 120 s
    assert code == 1
    _one_error(out, r"digest-mailer\.toml: not a regular file")
