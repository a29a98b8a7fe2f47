"""The fast path (one template per distinct digest, spliced per subscriber) gives the same bytes
as the simple path (everything rendered and serialised per subscriber), Message-ID and MIME
boundary aside."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import capture
from digest_mailer.compose import Composer
from digest_mailer.marks import PLAIN_PUNCTUATION, escaped
from digest_mailer.message import (
    MessageTemplate,
    Shared,
    build_message,
    list_unsubscribe,
    unsubscribe_token,
)
from digest_mailer.models import Digest, OutgoingMessage, Paper, Subscriber
from digest_mailer.render import Renderer
from digest_mailer.select import select
from digest_mailer.sources import FileSource

RUN = date(2025, 6, 2)
WHEN = datetime(2025, 6, 2, 7, tzinfo=UTC)
SECRET = b"fast-path-secret-0123456789"
URL = "https://papers.example.org/unsubscribe/{token}"
SHARED = Shared(sender="Daily Papers <papers@example.org>", envelope_from="papers@example.org",
                reply_to="Editors <ed@example.org>", list_id="Daily Papers <dp.example.org>",
                mailto="unsubscribe@example.org", when=WHEN, run_date=RUN)
NAMES = ["Ada", "", "Zoë 李 🎉", "O'Brien & <Co> \"Q\"", "محمد", "N" * 90,
         "Jean-Luc Picard, PhD", "zq0000000000000000nm", "Ada  Lovelace", "A.B. Smith",
         "Zoë Nowak", "Søren Kierkegaard-Müller von und zu Lichtenstein-Hohenzollern Ω",
         "Ada Lovelace Byron King Noel Countess of Lovelace Augusta Ada", "X",
         # template syntax, marks and their variants, letters that change length under
         # upper/title (ß, ŉ, the Turkish dotted and dotless i), bidi marks, a very long name
         "{{ name }} {% if 1 %}x{% endif %} {# c #}", "zqx0123456789abcdefnm zqz0123456789abcdefur",
         "Straße ŉ", "İsmail ıi", "Jose\u0301 Zoe\u0308\u00a0N\u00adM",
         "\u202eevil\u202c \u200fRTL\u200e", "ǆ ﬁ ﬀ", "L" * 1000,
         "Q \"quoted\", name"]  # a double quote but no apostrophe: attributes in single quotes
PROFILES: list[dict[str, Any]] = [
    dict(topics=("reinforcement learning",)), dict(topics=("diffusion", "video")), dict(),
    dict(max_papers=3), dict(authors=("Yejin Choi",), exclude=("survey",))]


@pytest.fixture(scope="module")
def papers() -> tuple[Paper, ...]:
    return FileSource(None, capture("hf_daily_papers_2025-06-02.json")).fetch(RUN).papers


EMAILS = ["reader{n}+x@example.org", "r{n}@a.io", "a.very.long.address.number.{n}@"
          "subdomain.of.a.rather.long.domain.example.org"]


def subscribers() -> list[Subscriber]:
    return [Subscriber(email=EMAILS[n % 3].format(n=n), name=name, **PROFILES[n % 5])
            for n, name in enumerate(NAMES * 3)]


def slow(renderer: Renderer, sub: Subscriber, papers: tuple[Paper, ...],
         message_id: str) -> OutgoingMessage:
    selection = select(sub, papers, ())
    token = unsubscribe_token(SECRET, sub.email, SHARED.list_id)
    url = URL.replace("{token}", token)
    digest = Digest("Daily Papers", RUN, sub, selection.matches, selection.over_cap, url)
    return build_message(renderer.render(digest), subscriber=sub, sender=SHARED.sender,
                         envelope_from=SHARED.envelope_from, reply_to=SHARED.reply_to,
                         list_id_header=SHARED.list_id,
                         unsubscribe=list_unsubscribe(url, SHARED.mailto, token),
                         message_id=message_id, when=WHEN, run_date=RUN)


def masked(data: bytes) -> bytes:
    data = re.sub(rb"===============\d+==", b"BOUNDARY", data)
    return re.sub(rb"Message-ID: <[^>]+>", b"Message-ID: <MASKED>", data)


SUBJECTS = [None, "{{ count }} papers for {{ name or email }}",
            # each of these changes the value: only rendering with it gives the right subject
            "Hi {{ name|title }}", "{% if name == 'Ada' %}Dear Ada{% else %}Hello{% endif %}",
            "{{ email|upper }} {{ name|length }}", "{{ name[:1] }}: {{ count }}",
            "{% set n = name %}{{ n|lower }}", "{{ name|upper }}: {{ name|length }}",
            "{{ name|title|truncate(20) }} {{ email|replace('.', ' dot ') }}"]


def custom_templates(tmp_path: Path, where: str) -> Path:
    """The shipped templates with the subscriber's values put where an operator might."""
    shipped = Path(__file__).resolve().parents[1] / "templates"
    folder = tmp_path / "tpl"
    folder.mkdir(exist_ok=True)
    html = (shipped / "digest.mjml.j2").read_text()
    text = (shipped / "digest.txt.j2").read_text()
    extra = {
        "contexts": '<p title="{{ name }}" data-x=\'{{ email }}\'>{{ name }} &amp; {{ email }}'
                    '</p><!-- for {{ name }} --><p><a href="mailto:{{ email }}?s={{ name }}">'
                    'me</a> <a href="{{ unsubscribe_url }}&amp;n={{ name }}">u</a></p>',
        "filters": "<p>{{ name|upper }} {{ email|replace('@', ' at ') }}"
                   "{% if name == 'Ada' %} (hi Ada){% endif %}</p>",
        "css": "",
    }[where]
    html = html.replace("<p>You receive", extra + "\n          <p>You receive")
    # In a CSS rule, which the inliner copies into style attributes, where a value is
    # escaped as an attribute, not as the CSS text it was written in: only a check by
    # rendering sees it.
    html = html.replace("<mj-head>", '<mj-head><mj-style>.ft p { font-family: "{{ name }}"; }'
                        "</mj-style>") if where == "css" else html
    (folder / "digest.mjml.j2").write_text(html)
    (folder / "digest.txt.j2").write_text(text + ("{{ name|upper }}\n" if where == "filters"
                                                  else "{{ name }} {{ email }}\n"))
    return folder


def assert_fast_equals_real(renderer: Renderer, papers: tuple[Paper, ...]) -> Composer:
    composer = Composer(renderer=renderer, shared=SHARED, newsletter="Daily Papers",
                        domain="example.org", unsubscribe_url=URL, secret=SECRET, papers=papers,
                        max_templates=3)  # small, so templates are also evicted and remade
    # Grouped by profile: neighbours share a template, and the small cache still evicts.
    for sub in sorted(subscribers(), key=lambda s: (s.topics, s.authors, s.max_papers)):
        fast = composer.compose(composer.select(sub, ()), RUN, WHEN, want_html=True)
        reference = slow(renderer, sub, papers, fast.message_id)
        assert fast.data == reference.data or masked(fast.data) == masked(reference.data), \
            sub.name
        assert fast.html == reference.html and fast.subject == reference.subject
    return composer


@pytest.mark.parametrize("where", ["contexts", "filters", "css"])
def test_operator_templates_see_the_real_values(papers: tuple[Paper, ...], tmp_path: Path,
                                                where: str) -> None:
    renderer = Renderer(custom_templates(tmp_path, where))
    composer = assert_fast_equals_real(renderer, papers)
    # Printing a value anywhere keeps templates shared; changing it makes them personal.
    assert (composer.rendered_sets < len(subscribers())) == (where == "contexts")


def test_a_filtered_name_in_the_subject_is_the_real_name(papers: tuple[Paper, ...]) -> None:
    renderer = Renderer(subject_template="Hi {{ name|title }}{% if name == 'Ada' %}!{% endif %}")
    composer = Composer(renderer=renderer, shared=SHARED, newsletter="Daily Papers",
                        domain="example.org", unsubscribe_url=URL, secret=SECRET, papers=papers)
    message = composer.compose(composer.select(Subscriber("ada@example.org", "Ada"), ()),
                               RUN, WHEN)
    assert message.subject == "Hi Ada!"
    other = composer.compose(composer.select(Subscriber("bo@example.org", "bo smith"), ()),
                             RUN, WHEN)
    assert other.subject == "Hi Bo Smith"


@pytest.mark.parametrize("subject", SUBJECTS)
def test_fast_path_equals_the_simple_path(papers: tuple[Paper, ...],
                                          subject: str | None) -> None:
    renderer = Renderer(subject_template=subject)
    composer = assert_fast_equals_real(renderer, papers)
    assert renderer.personal == (subject in SUBJECTS[2:])
    if not renderer.personal:
        assert composer.rendered_sets < len(subscribers())  # templates were shared


def test_rebuilt_from_the_stored_template(papers: tuple[Paper, ...]) -> None:
    renderer = Renderer()
    sub = subscribers()[2]
    selection = select(sub, papers, ())
    token = unsubscribe_token(SECRET, sub.email, SHARED.list_id)
    url = URL.replace("{token}", token)
    template = MessageTemplate(renderer.render_template(
        Digest("Daily Papers", RUN, sub, selection.matches, selection.over_cap, url)), SHARED)
    again = MessageTemplate.from_bytes(template.to_bytes(), set_id=7, signer=None)
    kwargs: dict[str, Any] = dict(email=sub.email, name=sub.name, unsubscribe_url=url, token=token,
                  message_id="<same@example.org>")
    first, second = template.personalize(**kwargs), again.personalize(**kwargs)
    assert masked(first.data) == masked(second.data)
    assert second.set_id == 7 and second.message_id == "<same@example.org>"


def test_marks_in_a_feed_are_only_text(tmp_path: Path, papers: tuple[Paper, ...]) -> None:
    from dataclasses import replace

    forged = replace(papers[0], title="zq0123456789abcdefnm zq0123456789abcdefur")
    composer = Composer(renderer=Renderer(), shared=SHARED, newsletter="Daily Papers",
                        domain="example.org", unsubscribe_url=URL, secret=SECRET,
                        papers=(forged,))
    sub = Subscriber(email="ada@example.org", name="Ada")
    message = composer.compose(composer.select(sub, ()), RUN, WHEN, want_html=True)
    assert "zq0123456789abcdefnm zq0123456789abcdefur" in message.html


def test_values_escaped_without_the_serialiser_are_the_ones_it_leaves_alone() -> None:
    """escaped() skips the parse and serialisation for values made of letters, digits and
    PLAIN_PUNCTUATION (every unsubscribe link): each of those characters must come out of
    the serialiser as it went in, in every context, or the fast path would differ."""
    for c in PLAIN_PUNCTUATION:
        value = f"a{c}b é"  # the space and the accent take the slow path
        assert escaped(value) == (value, value, value, value), c
    assert escaped("https://papers.example.org/unsubscribe/Ab_-9") == (
        ("https://papers.example.org/unsubscribe/Ab_-9",) * 4)
    # And a character it does change is not among them.
    assert escaped("a&b é")[0] == "a&amp;b é" and "&" not in PLAIN_PUNCTUATION
