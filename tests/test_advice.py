"""Help with topics: `check` and `explain` warn about a topic that found nothing in the recent
feeds the ledger knows, or one that matches most of every feed; `explain --topic` tries one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

from test_cli import invoke

from conftest import SAMPLE
from digest_mailer.advice import topic_warnings
from digest_mailer.config import load_config
from digest_mailer.models import Paper, Subscriber
from digest_mailer.store import Ledger

TITLES = ["Diffusion models at scale", "A model of language", "Model merging for LLMs",
          "Modeling speech", "World models", "Agents that plan"]


def feeds(days: int = 3) -> dict[str, list[Paper]]:
    return {f"2025-06-0{d}": [Paper(id=f"2506.0{d}{i:03d}", title=t)
                              for i, t in enumerate(TITLES)] for d in range(1, days + 1)}


def test_warnings_for_a_topic_that_finds_nothing_or_almost_everything() -> None:
    subs = [Subscriber("a@example.org", topics=("formal verification", "model", "diffusion")),
            Subscriber("b@example.org", topics=("formal verification",))]
    lines = topic_warnings(subs, feeds(), what="the test feeds")
    assert lines == [
        "warning: topic 'formal verification' (a@example.org and 1 more) matched none of the "
        "18 papers in the test feeds: check its spelling, or try a broader word",
        "warning: topic 'model' (a@example.org) matched 83% or more of every feed in the test "
        "feeds: it filters little; a narrower phrase helps"]
    assert topic_warnings(subs, {}) == []  # nothing known yet: nothing to say


def ledger_with_feeds(tmp_path: Path) -> Path:
    path = tmp_path / "digest-state.sqlite3"
    with Ledger.open(path) as ledger:
        for day, papers in feeds().items():
            ledger.remember([Paper(p.id, p.title, listed_on=date.fromisoformat(day))
                             for p in papers], datetime(2025, 6, 3, tzinfo=UTC))
    return path


def test_check_warns_about_topics_from_the_ledger(write_config: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    path = write_config(subscribers=[{"email": "a@example.org",
                                      "topics": ["formal verification", "diffusion"]}])
    state = load_config(path).state_path
    state.parent.mkdir(parents=True, exist_ok=True)
    ledger_with_feeds(tmp_path).rename(state)
    result = invoke("check", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert ("warning: topic 'formal verification' (a@example.org) matched none of the 18 "
            "papers in the titles of the last 3 feed(s) in the ledger") in result.stdout
    assert "'diffusion'" not in result.stdout


def test_explain_tries_a_topic_before_it_is_saved(write_config: Callable[..., Path]) -> None:
    path = write_config(subscribers=[{"email": "a@example.org", "topics": ["formal methods"]}])
    before = path.read_bytes()
    result = invoke("explain", "--config", str(path), "--to", "a@example.org", "--source",
                    str(SAMPLE), "--topic", "quantisation", "--topic", "LLMs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Trying the topics 'quantisation', 'LLMs' (not saved)"
    assert lines[1].startswith("KEPT     2506.00104")
    assert lines[2].strip() == ("quantisation (title, keywords, abstract, as 'Quantization' "
                                "by stem); LLMs (title, keywords, abstract, as 'LLM' by stem)")
    assert path.read_bytes() == before
    saved = invoke("explain", "--config", str(path), "--to", "a@example.org", "--source",
                   str(SAMPLE)).stdout
    assert saved.splitlines()[0].startswith("warning: topic 'formal methods' (a@example.org) "
                                            "matched none of the 7 papers in the current feed")


def test_explain_json_carries_the_topics_and_warnings(write_config: Callable[..., Path]) -> None:
    import json

    path = write_config(subscribers=[{"email": "a@example.org", "topics": ["diffusion"]}])
    result = invoke("explain", "--config", str(path), "--to", "a@example.org", "--source",
                    str(SAMPLE), "--topic", "zero-knowledge proofs", "--json")
    doc = json.loads(result.stdout)
    assert doc["topics"] == ["zero-knowledge proofs"]
    assert doc["warnings"][0].startswith("warning: topic 'zero-knowledge proofs'")
    assert not any(p["kept"] for p in doc["papers"])


def test_a_topic_with_no_words_or_only_small_words_is_warned_about_without_any_feed() -> None:
    subs = [Subscriber("a@example.org", topics=("🤖", "of the", "diffusion", "--"))]
    assert topic_warnings(subs, {}) == [
        "warning: topic '🤖' (a@example.org) has no letters or digits, so it matches nothing",
        "warning: topic 'of the' (a@example.org) is only small words (a, of, the...), so it "
        "matches nearly every paper: add the subject's own words",
        "warning: topic '--' (a@example.org) has no letters or digits, so it matches nothing"]


def test_check_warns_about_such_topics_with_no_ledger_file(
        write_config: Callable[..., Path]) -> None:
    path = write_config(subscribers=[{"email": "a@example.org", "topics": ["🤖"]}])
    assert not load_config(path).state_path.exists()
    result = invoke("check", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert "warning: topic '🤖' (a@example.org) has no letters or digits" in result.stdout
    assert not load_config(path).state_path.exists()  # check creates nothing


def test_check_and_explain_on_an_empty_ledger_file(write_config: Callable[..., Path]) -> None:
    """A zero-byte ledger (touched, or a first run killed at once) is an empty ledger."""
    path = write_config(subscribers=[{"email": "a@example.org", "topics": ["diffusion"]}])
    state = load_config(path).state_path
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(b"")
    check = invoke("check", "--config", str(path))
    assert check.exit_code == 0, check.output
    explained = invoke("explain", "--config", str(path), "--to", "a@example.org", "--source",
                       str(SAMPLE))
    assert explained.exit_code == 0, explained.output
    assert "KEPT" in explained.stdout
    assert state.read_bytes() == b""


def test_explain_refuses_a_tried_topic_with_no_words(write_config: Callable[..., Path]) -> None:
    path = write_config(subscribers=[{"email": "a@example.org", "topics": ["diffusion"]}])
    for bad in ("", "  ", "--"):
        result = invoke("explain", "--config", str(path), "--to", "a@example.org", "--source",
                        str(SAMPLE), "--topic", "LLM", "--topic", bad)
        assert result.exit_code != 0
        assert result.output.startswith(f"Error: --topic {bad.strip()!r} has no letters or "
                                        "digits, so it matches nothing"), result.output
        assert "Traceback" not in result.output and "KEPT" not in result.output
