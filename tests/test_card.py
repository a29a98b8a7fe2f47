"""What a paper's card shows: LaTeX as text, the contribution, the paper's facts, and why."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from test_email import dry_run, parse, parts

from conftest import capture
from digest_mailer.card import contribution, plain
from digest_mailer.models import Digest, Paper, Subscriber
from digest_mailer.render import Renderer, paper_view, template_key
from digest_mailer.select import select
from digest_mailer.sources.hf_api import paper_from_item

RUN = date(2025, 6, 2)


@pytest.mark.parametrize(("tex", "shown"), [
    ("$\\alpha$ moment", "α moment"),
    ("AlphaOne ($\\alpha$1)", "AlphaOne (α1)"),
    ("an excess risk of $\\mathcal{O}(n^2)$", "an excess risk of O(n²)"),
    ("$x_{t-1} \\sim p_\\theta$", "xₜ₋₁ ~ p_θ"),
    ("$\\mathbb{R}^d$ and $k \\leq 10$", "ℝ^d and k ≤ 10"),
    ("\\textbf{Fast} and \\emph{exact}", "Fast and exact"),
    ("$\\frac{1}{2}$ of the time", "1/2 of the time"),
    ("under a mild ''informative'' condition", "under a mild “informative” condition"),
    ("a \\unknowncommand stays", "a unknowncommand stays"),
    ("no markup at all, 50% faster ~2x", "no markup at all, 50% faster ~2x"),
    ("$ unbalanced", "$ unbalanced"),
])
def test_latex_becomes_readable_text(tex: str, shown: str) -> None:
    assert plain(tex) == shown


def test_the_contribution_sentence_stands_in_for_a_missing_summary() -> None:
    abstract = ("Large models are costly. Prior work prunes them. In this paper, we propose "
                "Foo, a method that halves the cost. It works on every benchmark.")
    assert contribution(abstract) == "In this paper, we propose Foo, a method that halves the cost."
    assert contribution("Models are big. This work introduces Bar.") == "This work introduces Bar."
    assert contribution("No claim here. Nor here.") == "No claim here. Nor here."
    for lead in ("To address this, we introduce Baz.", "Here, we present Baz.",
                 "To this end, we design Baz.", "In this work we show Baz."):
        assert contribution(f"Models are big. {lead} It is good.") == lead


def card_of(paper: Paper, sub: Subscriber | None = None) -> object:
    sub = sub or Subscriber("a@example.org")
    (m,) = select(sub, [paper], ()).matches
    return paper_view(m, RUN)


def test_stars_comments_date_and_the_organisation_name() -> None:
    item = {"paper": {"id": "2506.00001", "title": "T", "githubRepo": "https://github.com/x/y",
                      "githubStars": 1234, "publishedAt": "2025-05-30T10:00:00.000Z",
                      "upvotes": 3},
            "numComments": 7, "organization": {"name": "example-lab", "fullname": "Example Lab"}}
    paper, _ = paper_from_item(item)
    assert paper is not None and paper.github_stars == 1234 and paper.num_comments == 7
    view = card_of(paper)
    assert ("Code ★\u00a01.2k", "https://github.com/x/y") in view.links  # type: ignore[attr-defined]
    assert view.comments == "7\u00a0comments"  # type: ignore[attr-defined]
    assert view.discussion_url == "https://huggingface.co/papers/2506.00001#community"  # type: ignore[attr-defined]
    assert view.day == "30 May"  # type: ignore[attr-defined]
    assert "Example Lab" in view.byline and "example-lab" not in view.byline  # type: ignore[attr-defined]


@pytest.mark.parametrize("raw", [-5, 10**30, "many", 3.7e20, True, None])
def test_feed_counts_are_clamped(raw: object) -> None:
    item = {"paper": {"id": "2506.00001", "title": "T", "githubStars": raw}, "numComments": raw}
    paper, _ = paper_from_item(item)
    assert paper is not None
    assert 0 <= paper.github_stars <= 2**31 - 1 and 0 <= paper.num_comments <= 2**31 - 1


def test_a_title_in_latex_and_an_old_paper_keeps_its_year() -> None:
    p = Paper("2401.00001", "$\\alpha$-Flows", published_at=datetime(2024, 1, 3, tzinfo=UTC))
    view = card_of(p)
    assert view.title == "α-Flows" and view.day == "3 Jan 2024"  # type: ignore[attr-defined]


def test_snippets_are_escaped_in_the_html(tmp_path: Path) -> None:
    abstract = 'We show <img src=x onerror=alert(1)> that diffusion <b>beats</b> "flows".'
    p = Paper("2506.00001", "Other", abstract)
    sub = Subscriber("a@example.org", topics=("diffusion",))
    sel = select(sub, [p], ())
    html = Renderer().render(Digest("Daily Papers", RUN, sub, sel.matches, 0, "https://u/x")).html
    assert "<img" not in html and "&lt;img src=x" in html
    assert "<mark" in html and "&lt;b&gt;beats&lt;/b&gt;" in html


def test_the_reasons_are_in_the_digest_key() -> None:
    a = Paper("2506.00001", "Diffusion", "diffusion here and there")
    one = Subscriber("a@example.org", topics=("diffusion",))
    two = Subscriber("a@example.org", topics=("DIFFUSION models",))
    keys = []
    for sub in (one, two):
        sel = select(sub, [a], ())
        keys.append(template_key(Digest("D", RUN, sub, sel.matches, 0, "u")))
    assert keys[0] != keys[1]


def test_one_author_is_the_author(write_config: Callable[..., Path], tmp_path: Path) -> None:
    path = write_config(subscribers=[{"email": "a@example.org",
                                      "topics": ["reinforcement learning"],
                                      "authors": ["Yejin Choi"]}])
    (data,) = dry_run(path).values()
    text, _ = parts(parse(data))
    assert "the topic reinforcement learning and the author Yejin Choi." in " ".join(text.split())


def test_a_twenty_paper_digest_with_reasons_stays_under_80_kb(
        write_config: Callable[..., Path]) -> None:
    topics = ["model", "LLM", "reasoning", "benchmark", "diffusion", "vision", "learning"]
    path = write_config(subscribers=[{"email": "all@example.org", "topics": topics,
                                      "max_papers": 20}],
                        source=capture("hf_daily_papers_2025-06-02.json"))
    (data,) = dry_run(path).values()
    _, html = parts(parse(data))
    assert html.count("Hugging Face</a>") == 20 and html.count("<mark") >= 10
    size = len(html.encode("utf-8"))
    assert size < 80_000, f"20-paper HTML is {size} bytes"


def test_latex_on_hostile_text_stays_fast() -> None:
    import time

    worst = ("\\(", "$", "\\textbf{", "^{", "$x_{")
    for text in ("\\(" * 100_000, "$" + "\\alpha " * 50_000,
                 *(w * (4999 // len(w)) for w in worst)):
        started = time.perf_counter()
        assert isinstance(plain(text), str)
        assert time.perf_counter() - started < 2.0


def test_the_comment_count_from_the_papers_page_cards() -> None:
    from digest_mailer.sources import hf_page

    html = capture("hf_papers_page_2024-08-01.html").read_bytes()
    cards_only = html.replace(b'data-target="DailyPapers"', b'data-target="Other"')
    papers = {p.id: p for p in hf_page.parse(cards_only, "page").papers}
    assert papers["2407.21783"].num_comments == 5  # the card's link to #community says 5


@pytest.mark.parametrize(("said", "count"), [("²", 0), ("-3", 0), ("1e9", 0), ("٣", 0),
                                             ("9" * 5000, 2**31 - 1)])
def test_hostile_counts_on_a_card_are_zero_or_clamped(said: str, count: int) -> None:
    from digest_mailer.sources import hf_page

    html = ('<article><h3><a href="/papers/2407.21783">T</a></h3><input type="checkbox">'
            f'<div class="leading-none">{said}</div>'
            f'<a href="/papers/2407.21783#community">{said}</a></article>').encode()
    (paper,) = hf_page.parse(html, "page").papers
    assert paper.num_comments == count and paper.upvotes == count


@pytest.mark.parametrize("abstract", [
    "To address a," + " " * 200_000 + "x",  # took minutes: \s* against [^,]*
    "In this work," + "\t" * 200_000 + "we",
    "Here, " + "we " * 100_000,
    "To address " + "a" * 1_000_000,
])
def test_the_contribution_sentence_of_a_hostile_abstract_is_found_fast(abstract: str) -> None:
    import time

    started = time.perf_counter()
    assert isinstance(contribution(abstract), str)
    assert time.perf_counter() - started < 2.0


def test_a_hostile_feed_renders_escaped_in_both_parts(write_config: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    """Markup, control characters, Unicode noncharacters, a lone surrogate and direction
    overrides in a feed's title and abstract: the run still sends, the markup stays text in the
    HTML part, and neither part carries the invisible or invalid characters."""
    import json

    doc = json.loads((Path(__file__).parents[1] / "samples" /
                      "daily-papers-sample.json").read_text(encoding="utf-8"))
    bad = "\x1b[2J \x00 \x07 \ufffe \uffff \ufdd0 \ud800 \u202e \u2066"
    doc[0]["paper"]["title"] = f"Diffusion <mark>x</mark> {bad} end"
    doc[0]["paper"]["summary"] = (f"We find that <mark>injected</mark> diffusion {bad} "
                                  "<script>alert(1)</script> beats flows.")
    doc[0]["paper"]["ai_summary"] = None
    feed = tmp_path / "hostile.json"
    feed.write_text(json.dumps(doc), encoding="utf-8")
    path = write_config(subscribers=[{"email": "a@example.org", "topics": ["diffusion"]}],
                        source=feed)
    (data,) = dry_run(path).values()
    text, html = parts(parse(data))
    assert "&lt;mark&gt;injected&lt;/mark&gt;" in html or "&lt;mark&gt;x&lt;/mark&gt;" in html
    assert "<script" not in html and "<mark>x" not in html and "<mark>injected" not in html
    assert "<mark>x</mark>" in text  # text stays text in the plain part
    for part in (text, html):
        assert not any(c in part for c in "\x1b\x00\x07\ufffe\uffff\ufdd0\ud800\u202e\u2066")


def test_a_megabyte_title_or_organisation_does_not_make_a_megabyte_email() -> None:
    p = Paper("2506.00001", "Diffusion " + "word " * 200_000, "diffusion",
              ai_summary="s " * 300_000, authors=tuple(f"Author{i} B" for i in range(10_000)),
              organization="o" * 100_000)
    sub = Subscriber("a@example.org", topics=("diffusion",))
    out = Renderer().render(Digest("Daily Papers", RUN, sub, select(sub, [p], ()).matches, 0,
                                   "https://u/x"))
    assert len(out.html) < 40_000 and len(out.text) < 10_000
    assert "Diffusion word word" in out.text and "…" in out.text
