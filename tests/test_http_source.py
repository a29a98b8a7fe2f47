"""The remote sources through a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from conftest import HttpServer, Reply, Request, capture, feed_fixture, slow
from digest_mailer.errors import SourceError
from digest_mailer.sources import SourceSpec, open_source
from digest_mailer.sources.http import USER_AGENT, HttpFetcher

RUN = date(2025, 6, 2)
JSON = {"Content-Type": "application/json"}


def item(pid: str, upvotes: int = 1, day: str = "2025-06-02") -> dict[str, Any]:
    return {"paper": {"id": pid, "title": f"Paper {pid}", "upvotes": upvotes,
                      "submittedOnDailyAt": f"{day}T08:00:00.000Z"}}


def fetcher(**kw: Any) -> HttpFetcher:
    sleeps: list[float] = []
    f = HttpFetcher(timeout=kw.pop("timeout", 2.0), retries=kw.pop("retries", 2),
                    sleep=sleeps.append, **kw)
    f.sleeps = sleeps  # type: ignore[attr-defined]
    return f


def fetch(server: HttpServer, path: str, *, kind: str = "huggingface", days: int = 1,
          http: HttpFetcher | None = None):
    http = http or fetcher()
    source = open_source(SourceSpec(kind, server.base + path, days), lambda: http)
    return source.fetch(RUN)


def test_paginates_each_day_until_an_empty_page(http_server: HttpServer) -> None:
    pages = {("2025-06-01", "0"): [item("2506.00001", 5, "2025-06-01"),
                                   item("2506.00002", 2, "2025-06-01")],
             ("2025-06-02", "0"): [item("2506.00003", 9), item("2506.00001", 7)],
             ("2025-06-02", "1"): [item("2506.00004", 1)]}

    def route(req: Request) -> Reply:
        return 200, JSON, json.dumps(pages.get((req.query["date"], req.query["p"]), [])).encode()

    http_server.routes["/api/daily_papers"] = route
    result = fetch(http_server, "/api/daily_papers", days=2)
    asked = [(r.query["date"], r.query["p"], r.query["limit"]) for r in http_server.requests]
    assert asked == [("2025-06-01", "0", "100"), ("2025-06-01", "1", "100"),
                     ("2025-06-02", "0", "100"), ("2025-06-02", "1", "100"),
                     ("2025-06-02", "2", "100")]
    assert sorted(p.id for p in result.papers) == ["2506.00001", "2506.00002", "2506.00003",
                                                  "2506.00004"]
    merged = next(p for p in result.papers if p.id == "2506.00001")
    assert merged.upvotes == 7 and merged.listed_on == date(2025, 6, 1)
    assert all(r.headers["user-agent"] == USER_AGENT for r in http_server.requests)


def test_fixture_served_over_http(http_server: HttpServer) -> None:
    body = feed_fixture("hf_api_2025-06-02.json").read_bytes()
    http_server.routes["/api/daily_papers"] = \
        lambda req: (200, JSON, body if req.query["p"] == "0" else b"[]")
    assert len(fetch(http_server, "/api/daily_papers").papers) == 6


def test_real_capture_served_over_http(http_server: HttpServer) -> None:
    body = capture("hf_daily_papers_2025-06-02.json").read_bytes()
    http_server.routes["/api/daily_papers"] = \
        lambda req: (200, JSON, body if req.query["p"] == "0" else b"[]")
    assert len(fetch(http_server, "/api/daily_papers").papers) == 20


def test_429_then_success_honours_retry_after(http_server: HttpServer) -> None:
    calls = []

    def route(req: Request) -> Reply:
        calls.append(req)
        if len(calls) == 1:
            return 429, {"Retry-After": "3"}, b"slow down"
        return 200, JSON, json.dumps([item("2506.00001")] if req.query["p"] == "0" else []
                                     ).encode()

    http_server.routes["/api"] = route
    http = fetcher()
    result = fetch(http_server, "/api", http=http)
    assert [p.id for p in result.papers] == ["2506.00001"]
    assert http.sleeps == [3.0]  # type: ignore[attr-defined]


def test_500_gives_up_after_the_retries_with_backoff(http_server: HttpServer) -> None:
    http_server.routes["/api"] = lambda req: (500, {}, b"boom")
    http = fetcher(retries=3, backoff=0.5)
    with pytest.raises(SourceError) as info:
        fetch(http_server, "/api", http=http)
    assert "HTTP 500 (gave up after 4 attempts)" in info.value.message
    assert http.sleeps == [0.5, 1.0, 2.0]  # type: ignore[attr-defined]
    assert len(http_server.requests) == 4


def test_404_is_not_retried(http_server: HttpServer) -> None:
    with pytest.raises(SourceError, match="HTTP 404"):
        fetch(http_server, "/missing")
    assert len(http_server.requests) == 1


def test_timeout_is_a_clear_error(http_server: HttpServer) -> None:
    http_server.routes["/api"] = slow(1.5, (200, JSON, b"[]"))
    with pytest.raises(SourceError, match=r"timed out after 0.3s \(gave up after 2 attempts\)"):
        # A short backoff: 0.3 s + the wait + 0.3 s must fit the whole fetch's 1.2 s.
        fetch(http_server, "/api", http=fetcher(timeout=0.3, retries=1, backoff=0.1))


def test_unreachable_server() -> None:
    from conftest import free_port

    http = fetcher(retries=0, timeout=1.0)
    source = open_source(SourceSpec("huggingface", f"http://127.0.0.1:{free_port()}/api", 1),
                         lambda: http)
    with pytest.raises(SourceError, match="unreachable"):
        source.fetch(RUN)


def test_response_size_is_capped(http_server: HttpServer) -> None:
    big = b"[" + b" " * 50_000 + b"]"
    http_server.routes["/api"] = lambda req: (200, JSON, big)
    with pytest.raises(SourceError, match=r"over source.max_bytes \(10,000"):
        fetch(http_server, "/api", http=fetcher(max_bytes=10_000))


def test_server_that_ignores_the_page_parameter_stops(http_server: HttpServer) -> None:
    http_server.routes["/api"] = lambda req: (200, JSON, json.dumps([item("2506.00001")]).encode())
    result = fetch(http_server, "/api")
    assert len(result.papers) == 1 and len(http_server.requests) == 2


def test_page_and_arxiv_urls_with_a_date_placeholder(http_server: HttpServer) -> None:
    page = feed_fixture("hf_papers_page_2024-08-01.html").read_bytes()
    http_server.routes["/papers/date/2025-06-01"] = lambda req: (200, {}, page)
    http_server.routes["/papers/date/2025-06-02"] = lambda req: (200, {}, page)
    result = fetch(http_server, "/papers/date/{date}", kind="huggingface-page", days=2)
    assert len(result.papers) == 4 and len(http_server.requests) == 2
    atom = feed_fixture("arxiv_api_query.xml").read_bytes()
    http_server.routes["/api/query"] = lambda req: (200, {}, atom)
    assert len(fetch(http_server, "/api/query", kind="arxiv").papers) == 3
    rss = feed_fixture("arxiv_listing_cs.LG.rss").read_bytes()
    http_server.routes["/rss/cs.LG"] = lambda req: (200, {}, rss)
    assert len(fetch(http_server, "/rss/cs.LG", kind="arxiv").papers) == 3


def test_a_deep_or_huge_feed_over_http_skips_the_bad_item(http_server: HttpServer) -> None:
    body = ('[{"paper": {"id": "2506.00001", "title": "A", "authors": ' + "[" * 100_000
            + "]" * 100_000 + '}}, {"paper": {"id": "2506.00002", "title": "B", "upvotes": '
            + "9" * 5_000 + "}}]").encode()
    http_server.routes["/api"] = lambda req: (200, JSON, body if req.query["p"] == "0" else b"[]")
    result = fetch(http_server, "/api")
    assert [(p.id, p.upvotes) for p in result.papers] == [("2506.00002", 2**31 - 1)]
    assert result.skipped == 1 and "nested more than 64 levels" in result.skipped_reasons[0]


@pytest.mark.parametrize(("pages", "requests", "ids"), [
    # Overlapping pages (an item moved while paging): each paper once.
    ({"0": ["2506.00001", "2506.00002"], "1": ["2506.00002", "2506.00003"]}, 3, 3),
    # A server that alternates between two pages forever stops when nothing is new.
    ({str(p): ["2506.00001" if p % 2 == 0 else "2506.00002"] for p in range(50)}, 3, 2),
    # Pages of items that are all unreadable still end at the first empty page.
    ({"0": ["junk"], "1": ["junk"]}, 3, 0),
])
def test_pages_that_repeat_or_overlap(http_server: HttpServer, pages: dict[str, list[str]],
                                      requests: int, ids: int) -> None:
    def route(req: Request) -> Reply:
        return 200, JSON, json.dumps([item(i) for i in pages.get(req.query["p"], [])]).encode()

    http_server.routes["/api"] = route
    result = fetch(http_server, "/api")
    assert len(http_server.requests) == requests
    assert len(result.papers) == ids == len({p.id for p in result.papers})
