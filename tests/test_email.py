"""The email as a subscriber's client sees it: rendered through the real pipeline to files,
then parsed back with the email package."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from conftest import ENV, NOW, REPO, SAMPLE, base_config, capture
from digest_mailer.config import load_config
from digest_mailer.message import MessageIds, fold, make_message_id, unsubscribe_token
from digest_mailer.pipeline import RunOptions, run

GOLDEN = REPO / "tests" / "golden"
TOKEN = unsubscribe_token(ENV["DIGEST_UNSUBSCRIBE_SECRET"].encode(), "ada@example.org",
                          "Daily Papers <daily-papers.example.org>")


def dry_run(config_path: Path, *, source: Path | None = None) -> dict[str, bytes]:
    config = load_config(config_path)
    run(config, RunOptions(dry_run=True, source=str(source) if source else None,
                           run_date=NOW.date()), now=NOW, env=ENV)
    folder = config.out_dir / NOW.date().isoformat()
    return {p.stem: p.read_bytes() for p in folder.glob("*.eml")}


def parse(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> tuple[str, str]:
    text, html = list(msg.iter_parts())
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    return text.get_content(), html.get_content()


@pytest.fixture
def sample_emails(write_config: Callable[..., Path]) -> dict[str, bytes]:
    return dry_run(write_config())


def test_headers_and_structure(sample_emails: dict[str, bytes]) -> None:
    data = sample_emails["ada_at_example.org"]
    msg = parse(data)
    assert msg["From"] == "Daily Papers <papers@example.org>"
    assert msg.get_all("To") == ["Ada <ada@example.org>"]
    assert msg["Subject"] == "Daily Papers: 2 new papers on diffusion"
    assert msg["Date"] == "Mon, 02 Jun 2025 07:00:00 +0000"
    assert re.fullmatch(r"<\d{14}\.[0-9a-f]{16}@example\.org>", msg["Message-ID"])
    assert msg["List-Id"] == "Daily Papers <daily-papers.example.org>"
    assert msg["List-Unsubscribe"] == (
        f"<https://papers.example.org/unsubscribe/{TOKEN}>, "
        f"<mailto:unsubscribe@example.org?subject=unsubscribe%20{TOKEN}>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in msg.iter_parts())
    assert b"=?utf-8?" not in data.split(b"\r\nList-Unsubscribe:")[1].split(b"\r\nList-Unsub")[0]


def test_crlf_and_line_lengths(sample_emails: dict[str, bytes]) -> None:
    for data in sample_emails.values():
        assert b"\n" not in data.replace(b"\r\n", b"")
        assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_text_and_html_carry_the_same_papers(sample_emails: dict[str, bytes]) -> None:
    text, html = parts(parse(sample_emails["ada_at_example.org"]))
    titles = ["Flow Matching for Fast Image Diffusion Sampling",
              "A Survey of Diffusion Transformers"]
    for title in titles:
        assert title in text and title in html
    for url in ("https://huggingface.co/papers/2506.00101", "https://arxiv.org/abs/2506.00101",
                "https://arxiv.org/pdf/2506.00101", "https://github.com/example/fast-flow"):
        assert url in text and f'href="{url}"' in html
    why = "diffusion, in the title and the abstract: “…and flow matching objectives"
    assert why in " ".join(text.split())
    assert ("<b>diffusion</b> in the title and the abstract: “…and flow matching objectives "
            "for <mark") in " ".join(html.split())
    assert f"https://papers.example.org/unsubscribe/{TOKEN}" in text
    assert "Ada Quint, Bo Zhang, Chloé Martin et al." in text  # first three, then et al.
    assert "Example Lab" in text and "42\u00a0upvotes" in text
    # The AI summary is preferred over the abstract.
    assert "Flow matching lets diffusion models sample in four steps" in html


def test_twenty_paper_digest_stays_under_gmail_clipping(write_config: Callable[..., Path],
                                                        tmp_path: Path) -> None:
    path = write_config(subscribers=[{"email": "all@example.org", "max_papers": 20}],
                        source=capture("hf_daily_papers_2025-06-02.json"))
    (data,) = dry_run(path).values()
    _, html = parts(parse(data))
    size = len(html.encode("utf-8"))
    assert html.count("Hugging Face</a>") == 20
    assert "Why:" not in html  # every paper: no reason to give
    assert size < 102_000, f"20-paper HTML is {size} bytes; Gmail clips past 102 KB"
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "<style" in html and 'style="' in html  # media queries kept, the rest inlined
    assert "fonts.googleapis.com" not in html and "<link" not in html


HOSTILE = ['<script>alert("x")</script>', '<img src=x onerror=alert(1)>',
           '<mj-include path="/etc/passwd" />', "{{ 7*7 }}", "{% raw %}", "</mj-text><mj-raw>"]


def hostile_feed(tmp_path: Path) -> Path:
    payload = " ".join(HOSTILE)
    item: dict[str, Any] = {
        "paper": {"id": "2506.06666", "title": f"Diffusion\r\nBcc: victim@example.org {payload}",
                  "summary": f"diffusion {payload}", "upvotes": 5,
                  "authors": [{"name": f"Eve {payload}"}, {"name": "Mallory\nX-Evil: 1"}],
                  "ai_summary": f"diffusion {payload}", "ai_keywords": [payload],
                  "githubRepo": "javascript:alert(1)", "projectPage": 'https://x.org/"onclick="'},
        "organization": {"fullname": f"Org\r\nX-Injected: yes {payload}"},
    }
    feed = tmp_path / "hostile.json"
    feed.write_text(json.dumps([item]))
    return feed


def test_feed_text_is_never_interpreted(write_config: Callable[..., Path],
                                        tmp_path: Path) -> None:
    (data,) = dry_run(write_config(subscribers=[{"email": "ada@example.org",
                                                 "topics": ["diffusion"]}]),
                      source=hostile_feed(tmp_path)).values()
    msg = parse(data)
    assert msg["Bcc"] is None and msg["X-Injected"] is None and msg["X-Evil"] is None
    assert "\n" not in msg["Subject"]
    text, html = parts(msg)
    lowered = html.lower()
    assert "<script" not in lowered and "<img" not in lowered and "<mj-" not in lowered
    assert "javascript:" not in lowered and "onclick" not in lowered
    assert "&lt;script&gt;" in html and "{{ 7*7 }}" in html and "49" not in html
    for snippet in HOSTILE:
        assert snippet in text  # shown as text, literally
    assert "{% raw %}" in html


@pytest.mark.parametrize("feed", ["sample", "capture"])
def test_golden_emails(write_config: Callable[..., Path], tmp_path: Path, feed: str) -> None:
    """Whole emails against reviewed copies; UPDATE_GOLDEN=1 rewrites them."""
    if feed == "sample":
        emails = dry_run(write_config())
    else:
        doc = base_config(tmp_path, source=capture("hf_daily_papers_2025-06-02.json"),
                          subscribers=[{"email": "rl@example.org", "name": "Zoë 李",
                                        "topics": ["reinforcement learning"],
                                        "exclude": ["diffusion"], "authors": ["Yejin Choi"],
                                        "max_papers": 3}])
        doc["delivery"]["out_dir"] = str(tmp_path / "capture-out")
        emails = {f"capture-{k}": v for k, v in
                  dry_run(write_config(doc, name="capture.toml")).items()}
    for stem, data in sorted(emails.items()):
        msg = parse(data)
        text, html = parts(msg)
        headers = "".join(f"{k}: {v}\n" for k, v in msg.items() if k not in ("Content-Type",))
        headers = re.sub(r"Message-ID: <[^>]+>", "Message-ID: <MASKED>", headers)
        got = {"headers.txt": headers, "text.txt": text.replace("\r\n", "\n"),
               "body.html": html.replace("\r\n", "\n")}
        folder = GOLDEN / stem
        if os.environ.get("UPDATE_GOLDEN"):
            folder.mkdir(parents=True, exist_ok=True)
            for name, content in got.items():
                (folder / name).write_text(content)
        for name, content in got.items():
            expected = (folder / name).read_text()
            assert content == expected, f"{folder / name} differs; review, then UPDATE_GOLDEN=1"
    assert {p.name for p in GOLDEN.iterdir()
            if p.name.startswith("capture-") == (feed == "capture")} == set(emails)


def test_sample_feed_ships_with_the_repo() -> None:
    assert SAMPLE.exists() and SAMPLE.stat().st_size < 50_000


def test_templates_dir_overrides_file_by_file(write_config: Callable[..., Path],
                                              tmp_path: Path) -> None:
    mine = tmp_path / "my-templates"
    mine.mkdir()
    (mine / "subject.txt.j2").write_text("{{ count }} for {{ name }} on {{ date }}\n")
    doc = base_config(tmp_path)
    doc["newsletter"]["templates_dir"] = str(mine)
    emails = dry_run(write_config(doc))
    msg = parse(emails["ada_at_example.org"])
    assert msg["Subject"] == "2 for Ada on 2025-06-02"
    assert "Flow Matching" in parts(msg)[1]  # the shipped HTML template still serves


def test_subject_template_from_the_config(write_config: Callable[..., Path],
                                          tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["newsletter"]["subject"] = "Papers for {{ name or 'you' }}: {{ count }}"
    msg = parse(dry_run(write_config(doc))["ada_at_example.org"])
    assert msg["Subject"] == "Papers for Ada: 2"


def test_a_broken_template_is_a_clear_error(write_config: Callable[..., Path],
                                            tmp_path: Path) -> None:
    from digest_mailer.errors import ConfigError

    doc = base_config(tmp_path)
    doc["newsletter"]["subject"] = "{{ count"
    path = write_config(doc)
    with pytest.raises(ConfigError, match=rf"^{path}: newsletter\.subject: template syntax "
                                          "error") as e:
        dry_run(path)
    assert "templates_dir" not in str(e.value.hint)
    del doc["newsletter"]["subject"]
    doc["newsletter"]["templates_dir"] = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"templates_dir: .*nope does not exist"):
        dry_run(write_config(doc))


def test_operator_templates_run_in_a_sandbox(write_config: Callable[..., Path],
                                             tmp_path: Path) -> None:
    """A custom template can neither run commands nor read files."""
    from digest_mailer.errors import ConfigError

    mine = tmp_path / "my-templates"
    mine.mkdir()
    pwned = tmp_path / "pwned"
    doc = base_config(tmp_path)
    doc["newsletter"]["templates_dir"] = str(mine)
    path = write_config(doc)
    attacks = [
        "{{ cycler.__init__.__globals__.os.popen('touch " + str(pwned) + "').read() }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ lipsum.__globals__['os'].system('touch " + str(pwned) + "') }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__ }}",
        "{% include '../../../../../../etc/passwd' %}",
        "{{ 'x' * 10**9 }}",
    ]
    for attack in attacks:
        (mine / "digest.txt.j2").write_text(attack + "\n")
        with pytest.raises(ConfigError) as e:
            dry_run(path)
        assert str(mine / "digest.txt.j2") in str(e.value), attack
        assert not pwned.exists()
        assert "root:" not in str(e.value)


def test_the_subject_is_folded_inside_its_value(sample_emails: dict[str, bytes]) -> None:
    """Folding right after `Subject:` left every parser a value starting with a space."""
    data = sample_emails["grace_at_example.org"]
    assert b"\r\nSubject: Daily Papers: 2 new papers on" in data
    assert parse(data)["Subject"] == ("Daily Papers: 2 new papers on reinforcement learning, "
                                      "speech recognition")
    from digest_mailer.message import subject_field

    for subject in ["x" * 75, ("Zoë 李 " * 30).strip(), "a " + "b" * 200,
                    "Daily Papers: " + "w " * 59 + "w"]:
        field = subject_field(subject)
        assert field.startswith(b"Subject: ") and not field.startswith(b"Subject:  ")
        assert max(len(line) for line in field.split(b"\r\n")) <= 998
        parsed = message_from_bytes(field + b"\r\n", policy=policy.default)["Subject"]
        assert parsed == subject


def test_an_unsubscribe_token_is_the_hmac_of_the_list_and_address() -> None:
    """Links already sent stay valid: the token is HMAC-SHA256 over the list's id and the
    lower-cased address, whatever computes it."""
    want = hmac.new(ENV["DIGEST_UNSUBSCRIBE_SECRET"].encode(),
                    b"daily-papers.example.org\nada@example.org", hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(want).rstrip(b"=").decode("ascii") == TOKEN
    assert unsubscribe_token(b"k" * 16, "Ada@Example.org") == base64.urlsafe_b64encode(
        hmac.new(b"k" * 16, b"ada@example.org", hashlib.sha256).digest()).rstrip(b"=").decode()


def test_a_runs_message_ids_are_distinct_and_of_one_shape() -> None:
    """A run draws its Message-IDs from the system's random source in chunks: thousands are
    all distinct (several chunks), shaped as make_message_id's, which the fast path of the
    header writer takes as they are."""
    ids = MessageIds("example.org", NOW)
    made = [ids() for _ in range(3000)]
    assert len(set(made)) == 3000
    shape = re.compile(rf"<{NOW:%Y%m%d%H%M%S}\.[0-9a-f]{{16}}@example\.org>")
    assert all(shape.fullmatch(m) for m in made)
    assert shape.fullmatch(make_message_id("example.org", NOW))
    assert all(fold("Message-ID", m) == f"Message-ID: {m}\r\n".encode() for m in made[:50])
