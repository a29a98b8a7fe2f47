from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, base_config, toml_text
from digest_mailer.cli.common import config_file as find_config
from digest_mailer.config import load_config, settings_table
from digest_mailer.errors import ConfigError

EXAMPLE = REPO / "config.example.toml"


def problems_of(path: Path) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.newsletter.name == "Daily Papers"
    assert [s.email for s in config.subscribers_view()][:2] == ["ada@example.org",
                                                                "grace@example.org"]
    assert config.state_path == REPO / "digest-state.sqlite3"


def test_example_config_documents_every_setting() -> None:
    text = EXAMPLE.read_text()
    doc = tomllib.loads(text)
    missing = []
    for key in settings_table():
        *parents, leaf = key.replace("[]", "").split(".")
        node = doc
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else node[0].get(p, {})
        present = leaf in node if isinstance(node, dict) else any(leaf in n for n in node)
        commented = re.search(rf"^#\s*{re.escape(leaf)}\s*=", text, re.M)
        if not (present or commented):
            missing.append(key)
    assert missing == [], f"config.example.toml does not show: {missing}"


def test_settings_table_covers_nested_sections() -> None:
    table = settings_table()
    assert "delivery.smtp.security" in table
    assert "subscribers[].topics" in table
    assert all(help_text for help_text in table.values())


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    doc = base_config(tmp_path, source="feed.json")
    doc["state"]["path"] = "ledger/state.sqlite3"
    doc["delivery"]["out_dir"] = "previews"
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "c.toml").write_text(toml_text(doc))
    config = load_config(sub / "c.toml")
    assert config.state_path == sub / "ledger" / "state.sqlite3"
    assert config.out_dir == sub / "previews"
    assert config.source_location == str(sub / "feed.json")


def test_bad_email_names_file_key_and_value(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["subscribers"][2]["email"] = "ada@"
    path = tmp_path / "config.toml"
    path.write_text(toml_text(doc))
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: subscribers[2].email: 'ada@' is not an email address")


def test_unknown_keys_suggest_the_right_one(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["subscribers"][1]["topcis"] = ["x"]
    doc["source"]["lookback_dayz"] = 3
    doc["delivery"]["smtp"]["hots"] = "x"
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    found = set(problems_of(path))
    assert found == {
        f"{path}: source.lookback_dayz: unknown key (did you mean 'lookback_days'?)",
        f"{path}: delivery.smtp.hots: unknown key (did you mean 'host'?)",
        f"{path}: subscribers[1].topcis: unknown key (did you mean 'topics'?)",
    }


def test_duplicate_addresses_are_case_insensitive(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["subscribers"][2]["email"] = "ADA@example.org"
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    assert problems_of(path) == (
        f"{path}: subscribers[2].email: 'ADA@example.org' duplicates subscribers[0].email "
        "(addresses are case-insensitive)",)


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("source", "kind", "rss", "source.kind: 'rss' is not valid: input should be 'huggingface'"),
    ("newsletter", "timezone", "Mars/Olympus", "newsletter.timezone: 'Mars/Olympus' is not an "
                                               "IANA time zone"),
    ("newsletter", "max_papers", 0, "newsletter.max_papers: 0 is not valid: input should be "
                                    "greater than or equal to 1"),
    ("newsletter", "from", "papers", "newsletter.from: 'papers' is not an address"),
    ("unsubscribe", "url", "https://x.org/unsub", "unsubscribe.url: 'https://x.org/unsub' has "
                                                  "no {token} placeholder"),
    ("source", "location", "ftp://x.org/feed", "source.location: 'ftp://x.org/feed' is not an "
                                               "http(s) URL"),
    ("delivery", "backend", "sendgrid", "delivery.backend: 'sendgrid' is not valid"),
])
def test_bad_values_are_named(tmp_path: Path, section: str, key: str, value: object,
                              expected: str) -> None:
    doc = base_config(tmp_path)
    doc[section][key] = value
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: {expected}"), line


def test_missing_required_keys(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    del doc["unsubscribe"]
    del doc["newsletter"]["from"]
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    assert set(problems_of(path)) == {f"{path}: newsletter.from: missing required key",
                                      f"{path}: unsubscribe: missing required key"}


def test_header_injection_in_a_name_is_refused(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["subscribers"][0]["name"] = "Ada\r\nBcc: victim@example.org"
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    (line,) = problems_of(path)
    assert "subscribers[0].name:" in line and "line break" in line


def test_topics_are_trimmed_and_deduplicated(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["subscribers"][0]["topics"] = ["  Diffusion ", "diffusion", "large  language model"]
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    sub = load_config(path).subscribers_view()[0]
    assert sub.topics == ("Diffusion", "large language model")
    assert sub.max_papers == 20


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[newsletter\nname = 1\n")
    (line,) = problems_of(bad)
    assert line.startswith(f"{bad}: invalid TOML:")
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.message == f"{missing}: no such file"
    assert "config.example.toml" in (info.value.hint or "")


def test_config_path_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGEST_MAILER_CONFIG", raising=False)
    assert find_config(None) == Path("digest-mailer.toml")
    monkeypatch.setenv("DIGEST_MAILER_CONFIG", "/etc/dm.toml")
    assert find_config(None) == Path("/etc/dm.toml")
    assert find_config("x.toml") == Path("x.toml")


def test_a_name_with_combining_accents_is_composed(tmp_path: Path) -> None:
    """mjml-python writes a combining mark inside an attribute as `\\u{301}`."""
    from digest_mailer.config import parse_config

    config = parse_config({"newsletter": {"from": "P <p@example.org>"},
                           "unsubscribe": {"url": "https://x.example.org/u/{token}"},
                           "subscribers": [{"email": "j@example.org",
                                            "name": "Jose\u0301 Zoe\u0308"}]},
                          name="c.toml", base_dir=tmp_path)
    assert config.subscribers_view()[0].name == "Jos\u00e9 Zo\u00eb"
