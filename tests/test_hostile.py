"""Hostile and broken input, and the standards every message keeps."""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Callable
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ENV, NOW, base_config
from digest_mailer.config import load_config, parse_config, settings_table
from digest_mailer.errors import ConfigError, DigestMailerError, SourceError
from digest_mailer.models import FetchResult
from digest_mailer.pipeline import RunOptions, run
from digest_mailer.sources import arxiv, hf_api, hf_page

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def dry_run(path: Path, source: Path | None = None) -> dict[str, bytes]:
    config = load_config(path)
    run(config, RunOptions(dry_run=True, run_date=NOW.date(),
                           source=str(source) if source else None), now=NOW, env=ENV)
    return {p.stem: p.read_bytes() for p in (config.out_dir / "2025-06-02").glob("*.eml")}


def feed(tmp_path: Path, **paper: Any) -> Path:
    path = tmp_path / "feed.json"
    path.write_text(json.dumps([{"paper": {"id": "2506.07777", "upvotes": 1, **paper}}]))
    return path


def test_long_unbroken_text_and_any_script_stay_within_998_octets(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    blob = "x" * 2000
    names = ["Zoë 🎉 Ångström", "محمد الخوارزمي", "李小龙", "עברית"]
    path = write_config(subscribers=[{"email": "all@example.org", "name": "محمد 李 🎉"}])
    source = feed(tmp_path, title=f"🎉 {blob} 李 עברית", summary=blob,
                  authors=[{"name": n} for n in names], ai_summary=blob)
    (data,) = dry_run(path, source).values()
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["To"].addresses[0].display_name == "محمد 李 🎉"
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for name in names[:3]:
        assert name in text and name in html
    assert blob in text and blob in html  # the title, whole


def test_control_characters_never_reach_a_header(write_config: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    doc = base_config(tmp_path, subscribers=[{"email": "all@example.org"}])
    doc["newsletter"]["subject"] = "{{ papers[0].title }} / {{ name }}"
    from conftest import toml_text

    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    source = feed(tmp_path, title="Hi\r\nBcc: victim@example.org\x00\x1b[31m\u2028there")
    (data,) = dry_run(path, source).values()
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Hi Bcc: victim@example.org [31m there /"
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"\x00" not in head and b"\x1b" not in head


def key_pair(tmp_path: Path) -> tuple[Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_dkim_signature_verifies(write_config: Callable[..., Path], tmp_path: Path) -> None:
    key_file, record = key_pair(tmp_path)
    doc = base_config(tmp_path)
    doc["delivery"]["dkim"] = {"domain": "example.org", "selector": "digest",
                               "key_file": str(key_file)}
    data = dry_run(write_config(doc))["ada_at_example.org"]
    assert data.startswith(b"DKIM-Signature: ")
    looked_up: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        looked_up.append(name)
        return record

    assert dkim.verify(data, dnsfunc=dns)
    assert looked_up == [b"digest._domainkey.example.org."]
    tampered = data.replace(b"Subject: Daily Papers", b"Subject: Daily Popers")
    assert not dkim.verify(tampered, dnsfunc=dns)


@pytest.mark.parametrize("what", ["dkim", "password"])
def test_secret_files_readable_by_others_are_refused(tmp_path: Path, what: str,
                                                     write_config: Callable[..., Path]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    doc = base_config(tmp_path)
    if what == "dkim":
        doc["delivery"]["dkim"] = {"domain": "example.org", "selector": "s",
                                   "key_file": str(secret)}
    else:
        doc["delivery"]["smtp"].update({"username": "u", "password_file": str(secret),
                                        "security": "starttls"})
    config = load_config(write_config(doc))
    with pytest.raises(DigestMailerError, match=r"readable by others \(mode -rw-r--r--\)") as e:
        run(config, RunOptions(run_date=NOW.date()), now=NOW, env=ENV)
    assert e.value.hint == f"chmod 600 {secret}"


def test_password_file_is_read_when_private(tmp_path: Path) -> None:
    from digest_mailer.credentials import password

    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    assert password({}, "X", secret) == "s3cret"
    assert password({"X": "from-env"}, "X", None) == "from-env"


# -- property-based: any input gives a result or a one-line error, never a traceback ----------

KEYS = sorted({part.replace("[]", "") for key in settings_table() for part in key.split(".")}
              | {"subscribers", "topcis", "x"})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(string.printable + "é李\u2028", max_size=30),
                    st.sampled_from(["ada@example.org", "a@", "UTC", "huggingface", "smtp",
                                     "https://x.org/{token}", "0 7 * * *", "1h", "weekly"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)), max_leaves=25)
documents = st.dictionaries(st.sampled_from(["newsletter", "source", "state", "delivery",
                                             "unsubscribe", "subscribers", "schedule", "x"]),
                            values, max_size=7)


@FAST
@given(doc=documents)
def test_config_loader_never_crashes(doc: dict[str, Any]) -> None:
    try:
        parse_config(doc, name="c.toml", base_dir=Path("/tmp"))
    except ConfigError as e:
        assert e.problems and all("\n" not in p and p.startswith("c.toml: ") for p in e.problems)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=20), st.sampled_from(["2501.00001", "2501.00001v2", "paper"])),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(
        st.sampled_from(["paper", "id", "title", "summary", "authors", "name", "upvotes",
                         "publishedAt", "ai_keywords", "githubRepo", "organization",
                         "dailyPapers", "fullname", "hidden"]), inner, max_size=6)),
    max_leaves=30)


def _parses(parse: Callable[[bytes, str], FetchResult], data: bytes) -> None:
    try:
        result = parse(data, "feed")
    except SourceError as e:
        assert "\n" not in e.message
        return
    assert result.skipped == len(result.skipped_reasons)
    assert all(p.id and p.title for p in result.papers)


@FAST
@given(doc=json_values)
def test_hf_api_parser_never_crashes(doc: Any) -> None:
    _parses(hf_api.parse, json.dumps(doc).encode())


@FAST
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_every_parser_survives_garbage(data: bytes) -> None:
    for parse in (hf_api.parse, hf_page.parse, arxiv.parse):
        _parses(parse, data)


entries = st.lists(st.fixed_dictionaries({
    "id": st.sampled_from(["http://arxiv.org/abs/2501.00001v1", "", "junk", "oai:arXiv.org:x"]),
    "title": st.text(max_size=20), "summary": st.text(max_size=40)}), max_size=4)


@FAST
@given(items=entries)
def test_arxiv_parser_on_generated_feeds(items: list[dict[str, str]]) -> None:
    from xml.sax.saxutils import escape

    body = "".join(f"<entry><id>{escape(i['id'])}</id><title>{escape(i['title'])}</title>"
                   f"<summary>{escape(i['summary'])}</summary></entry>" for i in items)
    xml = f'<feed xmlns="http://www.w3.org/2005/Atom">{body}</feed>'
    _parses(arxiv.parse, xml.encode("utf-8", "surrogatepass"))


@FAST
@given(cards=st.lists(st.tuples(st.text(max_size=15), st.text(max_size=10)), max_size=4))
def test_page_parser_on_generated_cards(cards: list[tuple[str, str]]) -> None:
    from html import escape

    body = "".join(f'<article><h3><a href="/papers/{escape(href)}">{escape(title)}</a></h3>'
                   f"</article>" for title, href in cards)
    _parses(hf_page.parse, f"<html><body>{body or '<p/>'}</body></html>".encode(
        "utf-8", "surrogatepass"))
