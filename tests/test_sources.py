"""Every parser against the repository's own fixtures (tests/fixtures/, always) and against the
real captures in ../shared/data (skipped without them, outside CI)."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest

from conftest import SAMPLE, capture, feed_fixture
from digest_mailer.errors import SourceError
from digest_mailer.sources import (
    FileSource,
    SourceSpec,
    arxiv,
    hf_api,
    hf_page,
    open_source,
    sniff_kind,
    window,
)
from digest_mailer.sources.common import canonical_id, clean_text, safe_url

RUN = date(2025, 6, 2)


def read(kind: str | None, path: Path):
    return FileSource(kind, path).fetch(RUN)


# -- the repository's fixtures: every parser, on a clean clone -------------------------------

def test_fixture_hf_api_2025_schema() -> None:
    result = read(None, feed_fixture("hf_api_2025-06-02.json"))  # kind sniffed
    assert len(result.papers) == 6 and result.skipped == 0
    first = result.papers[0]
    assert first.id == "2506.10001"
    assert first.title == ("Curriculum Reinforcement Learning for Long-Horizon Reasoning in "
                           "Small Language Models")  # the "\n  " is folded
    assert first.authors == ("Ines Duarte", "Kwame Mensah", "Li Wei", "Sofia Rossi")  # hidden
    assert (first.upvotes, first.num_comments, first.listed_on) == (58, 4, date(2025, 6, 2))
    assert first.organization == "Example Lab"
    assert first.github_url == "https://github.com/example-lab/curriculum-rl"
    assert first.project_url == "https://example-lab.github.io/curriculum-rl/"
    assert first.ai_summary and first.ai_summary.startswith("A length-ordered curriculum")
    assert "reinforcement learning" in first.ai_keywords
    assert "\n" not in first.abstract and first.abstract.startswith("We train small")
    assert [p.id for p in result.papers if p.ai_summary is None] == ["2506.10002"]
    assert {p.authors[2] for p in result.papers if p.id == "2506.10002"} == {"Zoë Laurent"}


def test_fixture_hf_api_2024_schema() -> None:
    result = read("huggingface", feed_fixture("hf_api_2024-08-01.json"))
    assert [(p.id, p.upvotes) for p in result.papers] == [
        ("2408.00101", 66), ("2408.00102", 31), ("2408.00103", 12), ("2408.00104", 4)]
    first = result.papers[0]
    assert first.ai_summary is None and first.ai_keywords == ()
    assert first.listed_on == date(2024, 8, 1) and first.published_at is not None
    assert first.abstract.startswith("We train sparse autoencoders") and first.num_comments == 3


def test_fixture_hf_page_props_and_cards_agree(tmp_path: Path) -> None:
    page = feed_fixture("hf_papers_page_2024-08-01.html")
    full = read(None, page)
    api = read(None, feed_fixture("hf_api_2024-08-01.json"))
    assert full.papers == api.papers  # the same items, embedded
    stripped = tmp_path / "cards.html"
    stripped.write_text(re.sub(r'data-target="DailyPapers" data-props="[^"]*"', "",
                               page.read_text()))
    cards = read("huggingface-page", stripped)
    assert [(p.id, p.title, p.upvotes) for p in cards.papers] == \
           [(p.id, p.title, p.upvotes) for p in full.papers]


def test_fixture_arxiv_api_atom() -> None:
    result = read(None, feed_fixture("arxiv_api_query.xml"))
    assert [p.id for p in result.papers] == ["2506.20001", "hep-th/9901001", "2506.20003"]
    first = result.papers[0]
    assert first.title == "Entanglement Growth in Monitored Bosonic Chains"
    assert first.authors == ("Helena Voss", "Kenji Mori")
    assert first.abstract.startswith("We study monitored chains") and "\n" not in first.abstract
    assert first.listed_on == date(2025, 6, 1)


@pytest.mark.parametrize("name", ["arxiv_listing_cs.LG.atom", "arxiv_listing_cs.LG.rss"])
def test_fixture_arxiv_listing_feeds(name: str) -> None:
    result = read(None, feed_fixture(name))
    assert [p.id for p in result.papers] == ["2506.01234", "2506.01777", "2505.09876"]
    first = result.papers[0]
    assert first.abstract == ("We revisit sparse mixture-of-experts layers for models under 1B "
                              "parameters.")  # the "arXiv:... Announce Type: new Abstract:" gone
    assert first.authors == ("Ana Lima", "Björn Berg")
    assert first.listed_on == date(2025, 6, 2)


def test_every_registered_kind_has_a_parser_a_fixture_and_a_sniff() -> None:
    from digest_mailer.constants import SOURCES
    from digest_mailer.sources import parse

    fixtures = {"huggingface": "hf_api_2025-06-02.json",
                "huggingface-page": "hf_papers_page_2024-08-01.html",
                "arxiv": "arxiv_api_query.xml"}
    assert {k.name for k in SOURCES} == set(fixtures)
    for kind in SOURCES:
        data = feed_fixture(fixtures[kind.name]).read_bytes()
        assert sniff_kind(data) == kind.name
        assert parse(kind.name, data, "f").papers


# -- the real captures ------------------------------------------------------------------------

def test_hf_api_2025_schema() -> None:
    result = read("huggingface", capture("hf_daily_papers_2025-06-02.json"))
    assert len(result.papers) == 20 and result.skipped == 0
    first = result.papers[0]
    assert first.id == "2505.24864"
    assert first.title == ("ProRL: Prolonged Reinforcement Learning Expands Reasoning "
                           "Boundaries in Large Language Models")  # the "\n  " is folded
    assert first.upvotes == 35 and first.listed_on == date(2025, 6, 2)
    assert first.authors[:2] == ("Mingjie Liu", "Shizhe Diao") and len(first.authors) == 8
    assert first.ai_summary and first.ai_summary.startswith("Prolonged reinforcement learning")
    assert "reinforcement learning" in first.ai_keywords
    assert "\n" not in first.abstract and first.abstract.startswith("Recent advances")
    by_id = {p.id: p for p in result.papers}
    assert by_id["2505.24863"].github_url == "https://github.com/ASTRAL-Group/AlphaOne"
    assert by_id["2505.24863"].project_url == "https://alphaone-project.github.io/"
    no_summary = [p for p in result.papers if p.ai_summary is None]
    assert [p.id for p in no_summary] == ["2505.24862"]


def test_hf_api_2024_schema() -> None:
    result = read("huggingface", capture("hf_daily_papers_2024-08-01.json"))
    assert len(result.papers) == 11 and result.skipped == 0
    llama = result.papers[0]
    assert llama.title == "The Llama 3 Herd of Models"
    assert llama.ai_summary is None and llama.ai_keywords == ()
    assert len(llama.authors) > 100 and llama.published_at is not None


def test_hf_page_reads_the_embedded_json() -> None:
    result = read("huggingface-page", capture("hf_papers_page_2024-08-01.html"))
    assert len(result.papers) == 13 and result.skipped == 0
    llama = result.papers[0]
    assert (llama.id, llama.upvotes) == ("2407.21783", 94)
    assert llama.abstract.startswith("Modern artificial intelligence")
    assert all(p.listed_on == date(2024, 8, 1) for p in result.papers)


def test_hf_page_falls_back_to_the_cards(tmp_path: Path) -> None:
    html = capture("hf_papers_page_2024-08-01.html").read_text()
    stripped = re.sub(r'data-props="[^"]*"', "", html)
    assert "dailyPapers" not in stripped
    page = tmp_path / "page.html"
    page.write_text(stripped)
    cards = read("huggingface-page", page)
    full = read("huggingface-page", capture("hf_papers_page_2024-08-01.html"))
    assert [(p.id, p.title, p.upvotes) for p in cards.papers] == \
           [(p.id, p.title, p.upvotes) for p in full.papers]


def test_hf_page_that_is_not_the_papers_page(tmp_path: Path) -> None:
    page = tmp_path / "other.html"
    page.write_text("<html><body><p>Hello</p></body></html>")
    with pytest.raises(SourceError, match="no daily papers found"):
        read("huggingface-page", page)


def test_arxiv_api_atom() -> None:
    result = read("arxiv", capture("arxiv_api_atom_legacy_au_del_maestro.xml"))
    assert len(result.papers) == 10 and result.skipped == 0
    ids = [p.id for p in result.papers]
    assert ids[:3] == ["1201.4869", "cond-mat/0412498", "cond-mat/0603029"]
    assert "1303.6954" in ids  # v2 stripped
    first = result.papers[0]
    assert first.title == "A Luttinger Liquid Core Inside Helium-4 Filled Nanopores"
    assert first.authors == ("Adrian Del Maestro",)
    assert first.abstract.startswith("As helium-4 is cooled") and "\n" not in first.abstract


ARXIV_RSS = """<?xml version="1.0" encoding="UTF-8"?>
<rss xmlns:arxiv="http://arxiv.org/schemas/atom" xmlns:dc="http://purl.org/dc/elements/1.1/"
     version="2.0"><channel><title>cs.LG updates on arXiv.org</title>
<item><title>Sparse Mixture of Experts at Small Scale</title>
<link>https://arxiv.org/abs/2506.01234</link>
<description>arXiv:2506.01234v2 Announce Type: new
Abstract: We revisit sparse mixture-of-experts layers for models under 1B parameters.</description>
<guid isPermaLink="false">oai:arXiv.org:2506.01234v2</guid><category>cs.LG</category>
<pubDate>Mon, 02 Jun 2025 00:00:00 -0400</pubDate><arxiv:announce_type>new</arxiv:announce_type>
<dc:creator>Ana Lima, Björn Berg</dc:creator></item>
<item><title></title><link>https://arxiv.org/abs/2506.09999</link></item>
</channel></rss>"""


def test_arxiv_rss_listing(tmp_path: Path) -> None:
    feed = tmp_path / "cs.LG.rss"
    feed.write_text(ARXIV_RSS)
    result = read(None, feed)  # kind sniffed from the content
    (paper,) = result.papers
    assert paper.id == "2506.01234"
    assert paper.abstract == ("We revisit sparse mixture-of-experts layers for models under 1B "
                              "parameters.")
    assert paper.authors == ("Ana Lima", "Björn Berg")
    assert paper.listed_on == date(2025, 6, 2)
    assert result.skipped == 1 and "no title" in result.skipped_reasons[0]


@pytest.mark.parametrize("payload", [
    b'<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY a "aaaa">]><feed>&a;</feed>',
    b"<feed><entry>",
    b"<html/>",
])
def test_arxiv_refuses_unsafe_or_broken_xml(payload: bytes) -> None:
    with pytest.raises(SourceError):
        arxiv.parse(payload, "feed.xml")


def test_hf_api_skips_items_without_id_or_title_and_counts_them() -> None:
    items = [{"paper": {"id": "2501.00001v3", "title": " A \n title ", "upvotes": 3}},
             {"paper": {"title": "no id"}},
             {"paper": {"id": "2501.00002", "title": ""}},
             "garbage", 17, None]
    result = hf_api.parse(json.dumps(items).encode(), "feed.json")
    assert [(p.id, p.title) for p in result.papers] == [("2501.00001", "A title")]
    assert result.skipped == 5
    assert result.skipped_reasons[0] == "feed.json item 1: no arXiv id (id=None)"


def test_hf_api_bad_json_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match=r"feed.json: not valid JSON"):
        hf_api.parse(b"{not json", "feed.json")
    with pytest.raises(SourceError, match="expected a JSON array"):
        hf_api.parse(b'"a string"', "feed.json")


def test_same_paper_on_two_days_is_one_paper() -> None:
    result = read(None, SAMPLE)
    ids = [p.id for p in result.papers]
    assert ids.count("2506.00101") == 1
    flow = next(p for p in result.papers if p.id == "2506.00101")
    assert flow.upvotes == 42 and flow.listed_on == date(2025, 6, 1)
    assert result.skipped == 1


def test_links_from_the_feed_must_be_http() -> None:
    item = {"paper": {"id": "2501.00003", "title": "T", "githubRepo": "javascript:alert(1)",
                      "projectPage": "data:text/html,<script>"}}
    (paper,) = hf_api.parse(json.dumps([item]).encode(), "f").papers
    assert paper.github_url is None and paper.project_url is None
    assert safe_url("https://github.com/a/b") == "https://github.com/a/b"
    assert safe_url("https://x.org/a b") is None
    assert safe_url('https://x.org/"onclick="alert(1)') is None


def test_canonical_ids_and_clean_text() -> None:
    assert canonical_id("http://arxiv.org/abs/2501.01234v12") == "2501.01234"
    assert canonical_id("oai:arXiv.org:hep-th/9901001v1") == "hep-th/9901001"
    assert canonical_id("https://huggingface.co/papers/2407.21783") == "2407.21783"
    assert canonical_id("not an id") is None and canonical_id(None) is None
    assert clean_text("a\u2028b\x00c\r\n  d") == "a b c d"


def test_sniffing_and_window(tmp_path: Path) -> None:
    assert sniff_kind(b"  [{}]") == "huggingface"
    assert sniff_kind(b"<!DOCTYPE html><html>") == "huggingface-page"
    assert sniff_kind(b'<?xml version="1.0"?><feed>') == "arxiv"
    assert sniff_kind(b"hello") is None
    odd = tmp_path / "odd.txt"
    odd.write_text("hello")
    with pytest.raises(SourceError, match="cannot tell what kind"):
        read(None, odd)
    assert window(RUN, 2) == (date(2025, 6, 1), date(2025, 6, 2))


def test_open_source_refuses_other_schemes() -> None:
    with pytest.raises(SourceError, match="only http and https"):
        open_source(SourceSpec(None, "ftp://example.org/feed.json"), lambda: None)  # type: ignore[arg-type,return-value]


def test_page_parser_module_reads_bytes_directly() -> None:
    data = capture("hf_papers_page_2024-08-01.html").read_bytes()
    assert len(hf_page.parse(data, "page").papers) == 13


def test_capture_skips_without_the_captures_and_fails_under_ci(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import conftest

    monkeypatch.setattr(conftest, "DATA", tmp_path / "absent")
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="the real captures are not in"):
        conftest.capture("hf_daily_papers_2025-06-02.json")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI must run with the real captures"):
        conftest.capture("hf_daily_papers_2025-06-02.json")


def test_local_sources_that_are_not_plain_files(tmp_path: Path) -> None:
    """A FIFO would block the run forever and /dev/zero would fill the memory."""
    import os
    import time

    fifo = tmp_path / "feed.fifo"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"feed\.fifo: not a regular file"):
        read(None, fifo)
    assert time.monotonic() - start < 2
    with pytest.raises(SourceError, match="/dev/zero: not a regular file"):
        read("huggingface", Path("/dev/zero"))
    with pytest.raises(SourceError, match=": not a regular file"):
        read(None, tmp_path)
    with pytest.raises(SourceError, match="not a usable file name"):
        read(None, Path("feed\x00.json"))
    big = tmp_path / "big.json"
    big.write_bytes(b"[" + b" " * 5_000 + b"]")
    with pytest.raises(SourceError, match=r"bigger than source.max_bytes \(1,000 bytes\)"):
        open_source(SourceSpec(None, str(big), max_bytes=1_000), lambda: None).fetch(RUN)  # type: ignore[arg-type,return-value]
    assert open_source(SourceSpec(None, str(big)), lambda: None).fetch(RUN).papers == ()  # type: ignore[arg-type,return-value]


# -- shapes the fixtures do not have -------------------------------------------------------

def test_only_arxiv_ids_are_ids() -> None:
    # A number is no id: the float 2506.10010 is 2506.1001, another paper.
    assert canonical_id(2506.10010) is None and canonical_id(250601234) is None
    assert canonical_id(True) is None
    # Months run 01-12; since 2015 (1501) the number has five digits, before it four.
    for bad in ("9999.99999", "2513.01234", "2500.01234", "0000.0000", "2506.0001",
                "1412.01234", "hep-th/9913001", "hep-th/9900001"):
        assert canonical_id(bad) is None, bad
    for good, expected in (("1412.3555", "1412.3555"), ("0704.0001v2", "0704.0001"),
                           ("1501.00001", "1501.00001"), ("arXiv:2506.01234v3", "2506.01234"),
                           ("math.AG/0601001", "math.AG/0601001")):
        assert canonical_id(good) == expected, good


def test_hf_items_of_every_wrong_type_are_skipped_with_a_reason() -> None:
    doc = [[1, 2], 3, None, "2506.00001", True,
           {"paper": "2506.00002", "title": "paper as a string"},
           {"paper": {"id": 2506.10010, "title": "a number as the id"}},
           {"paper": {"id": "2506.00003", "title": "T", "authors": {"name": "A"},
                      "ai_keywords": 5, "upvotes": "7", "numComments": None,
                      "githubRepo": ["https://github.com/x/y"], "publishedAt": 1e308,
                      "submittedOnDailyAt": ["2025-06-02"]},
            "organization": "a string", "numComments": {"n": 1}}]
    result = hf_api.parse(json.dumps(doc).encode(), "feed")
    (paper,) = result.papers
    assert (paper.id, paper.authors, paper.ai_keywords, paper.upvotes, paper.github_url,
            paper.published_at, paper.listed_on) == ("2506.00003", (), (), 0, None, None, None)
    assert result.skipped == 7
    assert result.skipped_reasons[5] == "feed item 5: 'paper' is a str, not an object"


@pytest.mark.parametrize("encode", [
    lambda s: s.encode("utf-16"), lambda s: s.encode("utf-16-le"), lambda s: s.encode("utf-32"),
    lambda s: b"\xef\xbb\xbf" + s.encode()])
def test_json_in_any_unicode_encoding_is_read_and_sniffed(encode, tmp_path: Path) -> None:
    path = tmp_path / "feed.json"
    path.write_bytes(encode(json.dumps([{"paper": {"id": "2506.00001", "title": "Título"}}],
                                       ensure_ascii=False)))
    assert [p.title for p in read(None, path).papers] == ["Título"]


@pytest.mark.parametrize(("data", "kind"), [
    ('<?xml version="1.0" encoding="utf-16"?><rss></rss>'.encode("utf-16"), "arxiv"),
    (b"<!-- generated --><rss version='2.0'></rss>", "arxiv"),
    (b"<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'/>", "arxiv"),
    ("<!DOCTYPE html><html></html>".encode("utf-16"), "huggingface-page"),
    (b"\n\n<!-- c -->\n<!DOCTYPE html>", "huggingface-page"),
    (b"", None), (b"x", None), (b"\xef\xbb\xbf", None), (b"\xff\xfe", None),
])
def test_sniffing_sees_through_encodings_and_comments(data: bytes, kind: str | None) -> None:
    assert sniff_kind(data) == kind


RDF = b"""<?xml version="1.0" encoding="UTF-8"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
 xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/">
<channel rdf:about="http://arxiv.org/"><title>cs.LG updates on arXiv.org</title></channel>
<item rdf:about="http://arxiv.org/abs/2506.01234">
<title>Sparse experts, small models. (arXiv:2506.01234v1 [cs.LG])</title>
<link>http://arxiv.org/abs/2506.01234</link>
<description rdf:parseType="Literal">&lt;p&gt;We revisit sparse layers.&lt;/p&gt;</description>
<dc:creator>Ana Lima, Bj\xc3\xb6rn Berg</dc:creator>
<dc:date>2025-06-02T00:00:00-04:00</dc:date>
</item>
<item rdf:about="http://arxiv.org/abs/2506.05678"><title></title>
<link>http://arxiv.org/abs/2506.05678</link></item>
</rdf:RDF>"""


def test_arxiv_rss_1_0_rdf_as_the_old_listing_feeds_sent_it() -> None:
    result = arxiv.parse(RDF, "cs.LG")
    (paper,) = result.papers
    assert (paper.id, paper.authors, paper.listed_on) == ("2506.01234", ("Ana Lima", "Björn Berg"),
                                                          date(2025, 6, 2))
    assert paper.title.startswith("Sparse experts") and "sparse layers" in paper.abstract
    assert result.skipped == 1 and "no title" in result.skipped_reasons[0]


@pytest.mark.parametrize("root", [
    '<feed>',  # no namespace at all
    '<feed xmlns="http://purl.org/atom/ns#">',  # Atom 0.3
    '<a:feed xmlns:a="http://www.w3.org/2005/Atom">',  # a prefix instead of the default
])
def test_atom_with_odd_namespaces(root: str) -> None:
    prefix = "a:" if root.startswith("<a:") else ""
    entry = (f"<{prefix}entry><{prefix}id>http://arxiv.org/abs/2506.01234v1</{prefix}id>"
             f"<{prefix}title><![CDATA[Fast <b>&</b> sparse]]></{prefix}title>"
             f"<{prefix}author><{prefix}name>Ana &amp; Lima &#x1F600;</{prefix}name>"
             f"</{prefix}author></{prefix}entry>")
    doc = f"{root}{entry}</{prefix}feed>".encode()
    (paper,) = arxiv.parse(doc, "feed").papers
    assert (paper.id, paper.title, paper.authors) == ("2506.01234", "Fast <b>&</b> sparse",
                                                      ("Ana & Lima \U0001F600",))


@pytest.mark.parametrize(("payload", "expected"), [
    (b'<?xml version="1.0" encoding="klingon"?><rss/>',
     "not valid XML (unknown encoding: klingon)"),
    (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><rss>&x;</rss>',
     "refused unsafe XML"),
    (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aa"><!ENTITY b "&a;&a;">]><rss>&b;</rss>',
     "refused unsafe XML"),
    (b'<rss><channel><item><title>&nbsp;</title></item></channel></rss>', "not valid XML"),
    (b"", "not valid XML"), (b"<", "not valid XML"),
    (b"<html><body/></html>", "not an Atom or RSS feed"),
])
def test_xml_that_cannot_be_read_says_why(payload: bytes, expected: str) -> None:
    with pytest.raises(SourceError) as info:
        arxiv.parse(payload, "feed.xml")
    assert expected in info.value.message and "\n" not in info.value.message


def test_hf_page_reads_the_holder_that_has_the_papers() -> None:
    item = json.dumps({"dailyPapers": [{"paper": {"id": "2506.00001", "title": "T"}}]})
    holder = '<div data-target="DailyPapers" data-props="{props}"></div>'
    page = ("<html><body>" + holder.replace("{props}", "{}")
            + holder.replace("{props}", item.replace('"', "&quot;")) + "</body></html>")
    assert [p.id for p in hf_page.parse(page.encode(), "page").papers] == ["2506.00001"]


def test_hf_page_with_broken_data_props_and_no_cards_says_so() -> None:
    page = b'<html><div data-target="DailyPapers" data-props="{broken"></div></html>'
    with pytest.raises(SourceError, match="its DailyPapers data-props is not valid JSON"):
        hf_page.parse(page, "page")


@pytest.mark.parametrize("content", [b"", b"[", b" ", b"\x00", "€".encode("utf-16")[:3]])
def test_empty_and_tiny_files(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "feed"
    path.write_bytes(content)
    for kind in (None, "huggingface", "huggingface-page", "arxiv"):
        with pytest.raises(SourceError) as info:
            read(kind, path)
        assert "\n" not in info.value.message and info.value.hint


@pytest.mark.parametrize("what", ["empty", "directory", "klingon", "page"])
def test_the_cli_prints_one_error_line_for_a_local_feed_it_cannot_read(what: str,
                                                                        tmp_path: Path) -> None:
    from click.testing import CliRunner

    from conftest import ENV, base_config, toml_text
    from digest_mailer.cli import cli

    feed = tmp_path / "feed"
    if what == "directory":
        feed.mkdir()
    else:
        feed.write_bytes({"empty": b"", "klingon": b'<?xml version="1.0" encoding="klingon"?>'
                          b"<rss/>", "page": b"<!DOCTYPE html><html><p>hi</p></html>"}[what])
    config = tmp_path / "c.toml"
    config.write_text(toml_text(base_config(tmp_path, source=str(feed), backend="file")))
    result = CliRunner().invoke(cli, ["run", "--dry-run", "--config", str(config), "--date",
                                      "2025-06-02"], env=ENV)
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    # A directory is refused by the preflight, which names the config key; the rest by the
    # source, which names the file.
    assert len(lines) == 2 and lines[0].startswith("Error: ") and str(feed) in lines[0] and \
        lines[1].startswith("Hint: "), lines


@pytest.mark.parametrize("doctype", [
    '<!DOCTYPE html [<!ENTITY x SYSTEM "file:///etc/hostname">]>',
    '<?xml version="1.0"?><!DOCTYPE html [<!ENTITY a "aaaaaaaaaa"><!ENTITY x "&a;&a;&a;&a;&a;'
    '&a;&a;&a;&a;&a;">]>',
])
def test_the_papers_page_expands_no_entity(doctype: str) -> None:
    page = (f'{doctype}<html><body><article><h3><a href="/papers/2506.00001">T &x; end</a></h3>'
            "</article></body></html>")
    (paper,) = hf_page.parse(page.encode(), "page").papers
    assert paper.title == "T &x; end"


def test_file_urls_are_read_as_paths(tmp_path: Path) -> None:
    feed = tmp_path / "my feed.json"
    feed.write_text(json.dumps([{"paper": {"id": "2506.00001", "title": "T"}}]))
    for url in (feed.as_uri(), f"file://localhost{feed.as_uri()[7:]}"):
        assert len(open_source(SourceSpec(None, url), lambda: None).fetch(RUN).papers) == 1  # type: ignore[arg-type,return-value]
    with pytest.raises(SourceError, match="only local file: URLs"):
        open_source(SourceSpec(None, "file://fileserver/share/feed.json"), lambda: None)  # type: ignore[arg-type,return-value]


def test_one_invalid_utf8_byte_costs_a_character_not_the_day() -> None:
    doc = json.dumps([{"paper": {"id": "2506.00001", "title": "Caf\x00"}},
                      {"paper": {"id": "2506.00002", "title": "Fine"}}]).encode()
    data = doc.replace(b"\\u0000", b"\xe9")  # Latin-1 e-acute: not UTF-8
    result = hf_api.parse(data, "feed")
    assert [p.title for p in result.papers] == ["Caf\ufffd", "Fine"]
    # A surrogate written raw (CESU-8) is no UTF-8 either: replaced, the item read.
    raw = '[{"paper": {"id": "2506.00001", "title": "\ud800"}}]'.encode("utf-8", "surrogatepass")
    assert [p.title for p in hf_api.parse(raw, "feed").papers] == ["\ufffd\ufffd\ufffd"]


@pytest.mark.parametrize("decl", ["", '<?xml version="1.0" encoding="UTF-8"?>',
                                  "<?xml version='1.0'?>"])
def test_one_invalid_utf8_byte_in_xml_costs_a_character(decl: str) -> None:
    rss = (f"{decl}<rss><channel><item><link>http://arxiv.org/abs/2506.00001</link>"
           "<title>Caf\x00</title></item><item><link>http://arxiv.org/abs/2506.00002</link>"
           "<title>Fine</title></item></channel></rss>").encode().replace(b"\x00", b"\xe9")
    assert [p.title for p in arxiv.parse(rss, "feed").papers] == ["Caf\ufffd", "Fine"]


def test_xml_in_a_declared_single_byte_encoding_is_read_as_declared() -> None:
    rss = ('<?xml version="1.0" encoding="iso-8859-1"?><rss><channel><item><link>'
           "http://arxiv.org/abs/2506.00001</link><title>Café</title></item></channel></rss>")
    assert [p.title for p in arxiv.parse(rss.encode("latin-1"), "feed").papers] == ["Café"]
