"""Subscriber edits keep the operator's file as it was outside the edited entry."""

from __future__ import annotations

import shutil
from pathlib import Path

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
     "subscribers[5].email: 'bad@' is not an email address"),
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
