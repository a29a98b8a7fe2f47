"""The HTTP layer against a hand-written misbehaving server on 127.0.0.1 (raw sockets: no
framework would drip headers, loop redirects or lie about gzip on demand)."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest_mailer.config import Config
from digest_mailer.errors import SourceError
from digest_mailer.models import RunReport
from digest_mailer.sources import SourceSpec, open_source
from digest_mailer.sources.http import MAX_REDIRECTS, HttpFetcher

RUN = date(2025, 6, 2)
FEED = json.dumps([{"paper": {"id": "2506.00001", "title": "A paper", "upvotes": 3}}]).encode()
Behaviour = Callable[[socket.socket, bytes, threading.Event], None]


@contextmanager
def raw_server(behave: Behaviour, tls: ssl.SSLContext | None = None
               ) -> Iterator[tuple[str, list[bytes]]]:
    """Accepts connections; each reads one request head, then `behave` answers as it likes.
    Yields the base URL and the request heads seen. With `tls`, it speaks HTTPS."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    seen: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_side=True)
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                seen.append(head)
                behave(conn, head, stop)
            except OSError:  # the client hung up: that is what most tests want
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        scheme = "https" if tls else "http"
        yield f"{scheme}://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def drip(conn: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    for i in range(len(data)):
        if stop.is_set():
            return
        conn.sendall(data[i:i + 1])
        time.sleep(every)


def head(status: str = "200 OK", **headers: str) -> bytes:
    """A response head; the server answers one request per connection, and says so."""
    headers.setdefault("Connection", "close")
    lines = [f"HTTP/1.1 {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def get(url: str, **kw: float) -> bytes:
    with HttpFetcher(timeout=kw.get("timeout", 2.0), retries=int(kw.get("retries", 0)),
                     max_bytes=int(kw.get("max_bytes", 1_000_000)), sleep=lambda s: None) as f:
        return f.get(url)


def timed(url: str, **kw: float) -> tuple[float, SourceError]:
    start = time.monotonic()
    with pytest.raises(SourceError) as info:
        get(url, **kw)
    return time.monotonic() - start, info.value


# -- the total deadline --------------------------------------------------------------------

def test_a_body_dripping_one_byte_at_a_time_is_cut_at_the_deadline() -> None:
    body = b"[" + b" " * 200 + b"]"

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Length=str(len(body)), Content_Type="application/json"))
        drip(conn, body, 0.05, stop)  # 10 s in all; each read is quick

    with raw_server(behave) as (url, _):
        elapsed, error = timed(url + "/feed", timeout=1.0)
    assert "timed out after 1s" in error.message
    assert 0.9 <= elapsed < 3.0, elapsed


def test_headers_dripping_one_byte_at_a_time_are_cut_at_the_deadline() -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        drip(conn, head(X_Slow="a" * 300, Content_Length="2") + b"[]", 0.03, stop)

    with raw_server(behave) as (url, _):
        elapsed, error = timed(url + "/feed", timeout=1.0)
    assert "timed out after 1s" in error.message
    assert 0.9 <= elapsed < 3.0, elapsed


def test_the_deadline_covers_every_redirect_together() -> None:
    def behave(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        hop = int(request.split(b" ")[1].rsplit(b"/", 1)[1] or b"0")
        time.sleep(0.4)  # each hop is well within a per-operation timeout of 1 s
        conn.sendall(head("302 Found", Location=f"/{hop + 1}", Content_Length="0"))

    with raw_server(behave) as (url, seen):
        elapsed, error = timed(url + "/0", timeout=1.0)
    assert "timed out after 1s" in error.message
    assert elapsed < 2.5 and len(seen) <= 4


def test_retries_each_get_their_own_deadline_and_then_give_up() -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        stop.wait(5)  # silent

    with raw_server(behave) as (url, seen):
        elapsed, error = timed(url + "/feed", timeout=0.5, retries=2)
    assert "timed out after 0.5s (gave up after 3 attempts)" in error.message
    assert 1.4 <= elapsed < 4.0 and len(seen) == 3


# -- caps ----------------------------------------------------------------------------------

def test_endless_headers_stop_at_the_header_cap() -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        while not stop.is_set():
            conn.sendall(line * 64)

    with raw_server(behave) as (url, _):
        elapsed, error = timed(url + "/feed", timeout=10.0)
    assert "the server broke HTTP" in error.message
    assert elapsed < 5.0


def test_a_body_over_max_bytes_without_content_length() -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Connection="close"))
        while not stop.is_set():
            conn.sendall(b" " * 65536)

    with raw_server(behave) as (url, _):
        _, error = timed(url + "/feed", max_bytes=100_000)
    assert "over source.max_bytes (100,000 bytes)" in error.message


@pytest.mark.parametrize("length", ["200000", "9" * 5000])
def test_a_declared_length_over_max_bytes_is_refused_before_reading(length: str) -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Length=length))
        stop.wait(5)

    with raw_server(behave) as (url, _):
        elapsed, error = timed(url + "/feed", max_bytes=100_000)
    assert "over source.max_bytes (100,000)" in error.message or "broke HTTP" in error.message
    assert elapsed < 1.5


def test_a_gzip_bomb_stops_at_max_bytes_once_decoded() -> None:
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]", mtime=0)
    assert len(bomb) < 100_000

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Encoding="gzip", Content_Length=str(len(bomb))) + bomb)

    with raw_server(behave) as (url, _):
        _, error = timed(url + "/feed", max_bytes=1_000_000)
    assert "over source.max_bytes (1,000,000 bytes once decoded)" in error.message


# -- lies and loops ------------------------------------------------------------------------

def test_gzip_that_is_gzip_is_read() -> None:
    body = gzip.compress(FEED, mtime=0)

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Encoding="gzip", Content_Length=str(len(body))) + body)

    with raw_server(behave) as (url, seen):
        assert get(url + "/feed") == FEED
    assert b"accept-encoding: gzip, deflate" in seen[0].lower()


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


# mtime=0 everywhere: a gzip header carries the time it was written, and these bytes are in
# the tests' ids, which every pytest-xdist worker must collect the same.
@pytest.mark.parametrize(("encoding", "body"), [
    # Several gzip members one after the other are one gzip stream (RFC 1952 2.2); only the
    # first was read, silently cutting the feed.
    ("gzip", b"".join(gzip.compress(part, mtime=0)
                      for part in (FEED[:10], FEED[10:30], FEED[30:]))),
    # "deflate" without the zlib wrapper, as some servers send it (browsers read both).
    ("deflate", _raw_deflate(FEED)),
    ("deflate", zlib.compress(FEED)),
    # Bytes after the last member are ignored, as gzip(1) does.
    ("gzip", gzip.compress(FEED, mtime=0) + b"\x00\x00trailing"),
])
def test_every_valid_encoding_of_the_body_is_read_whole(encoding: str, body: bytes) -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Encoding=encoding, Content_Length=str(len(body))))
        drip(conn, body, 0, stop)  # one byte per read: a member boundary inside a read too

    with raw_server(behave) as (url, _):
        assert get(url + "/feed") == FEED


@pytest.mark.parametrize(("encoding", "body", "expected"), [
    ("gzip", b"this is not gzip at all", "the body is not valid gzip"),
    ("deflate", b"\x00\x01\x02 nor deflate", "the body is not valid deflate"),
    ("gzip", gzip.compress(FEED, mtime=0)[:-12], "the gzip body is cut short"),
    ("br", b"whatever", "Content-Encoding 'br', which was not asked for"),
])
def test_a_body_that_lies_about_its_encoding(encoding: str, body: bytes, expected: str) -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Encoding=encoding, Content_Length=str(len(body))) + body)

    with raw_server(behave) as (url, _):
        _, error = timed(url + "/feed")
    assert expected in error.message and "\n" not in error.message


def test_a_redirect_loop_is_one_clear_error() -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head("301 Moved Permanently", Location="/loop", Content_Length="0"))

    with raw_server(behave) as (url, seen):
        _, error = timed(url + "/loop")
    assert error.message == f"{url}/loop: more than {MAX_REDIRECTS} redirects (a loop?)"
    assert error.hint and len(seen) == MAX_REDIRECTS + 1


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/feed"])
def test_a_redirect_off_http_is_refused(location: str) -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head("302 Found", Location=location, Content_Length="0"))

    with raw_server(behave) as (url, _):
        _, error = timed(url + "/feed")
    assert "redirected to a URL that is not http(s)" in error.message


def test_a_redirect_without_location_is_not_a_feed() -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head("302 Found", Content_Length="2") + b"[]")

    with raw_server(behave) as (url, _):
        _, error = timed(url + "/feed")
    assert error.message == f"{url}/feed: HTTP 302"


def test_odd_retry_after_values_fall_back_to_backoff() -> None:
    answers = iter([head("503 Busy", Retry_After="²", Content_Length="0"),
                    head("503 Busy", Retry_After="Mon, 01 Jan 99999 00:00:00 GMT",
                         Content_Length="0"),
                    head(Content_Length=str(len(FEED))) + FEED])

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(next(answers))

    sleeps: list[float] = []
    with raw_server(behave) as (url, _), HttpFetcher(timeout=2, retries=3, backoff=0.25,
                                                     sleep=sleeps.append) as http:
        assert http.get(url + "/feed") == FEED
    assert sleeps == [0.25, 0.5]


def test_a_source_that_cannot_be_read_is_one_source_error() -> None:
    """Through the source, as a run sees it: a SourceError, which `serve` retries."""
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Encoding="gzip", Content_Length="4") + b"nope")

    with raw_server(behave) as (url, _), HttpFetcher(timeout=2, retries=0) as http:
        source = open_source(SourceSpec("huggingface", url + "/api", 1), lambda: http)
        with pytest.raises(SourceError, match="not valid gzip"):
            source.fetch(RUN)


# -- property-based: whatever the server answers, bytes or one SourceError ----------------

statuses = st.sampled_from(["200 OK", "204 No Content", "301 Moved", "302 Found", "404 Nope",
                            "429 Slow", "500 Boom", "999 What", "20 Bad", "OK"])
header_values = st.one_of(st.text(st.characters(codec="latin-1", exclude_characters="\r\n"),
                                  max_size=30),
                          st.sampled_from(["gzip", "deflate", "br", "chunked", "0", "-1", "²",
                                           "9" * 40, "/loop", "file:///x", "http://[::1",
                                           "Mon, 01 Jan 99999 00:00:00 GMT"]))
headers = st.lists(st.tuples(st.sampled_from(["Content-Length", "Content-Encoding",
                                              "Transfer-Encoding", "Location", "Retry-After",
                                              "Content-Type", "X-Junk"]), header_values),
                   max_size=5)
bodies = st.one_of(st.binary(max_size=200), st.just(gzip.compress(FEED, mtime=0)),
                   st.just(gzip.compress(FEED, mtime=0)[:20]), st.just(b"0\r\n\r\n"))


def _framed(body: bytes, framing: str) -> tuple[str, bytes]:
    """A Content-Length or Transfer-Encoding header and the body framed by it, true or not."""
    if framing == "length":
        return f"Content-Length: {len(body)}\r\n", body
    if framing == "longer":
        return f"Content-Length: {len(body) + 10}\r\n", body
    if framing == "shorter":
        return f"Content-Length: {max(len(body) - 5, 0)}\r\n", body
    if framing.startswith("chunked"):
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                          for i in range(0, len(body), 7))
        end = b"0\r\n\r\n" if framing == "chunked" else b"zz\r\n"
        return "Transfer-Encoding: chunked\r\n", chunks + end
    return "", body  # ends when the server closes


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(status=st.just("200 OK") | statuses, fields=headers, body=bodies,
       encoding=st.sampled_from(["", "gzip", "deflate", "br", "gzip, gzip", "identity"]),
       framing=st.sampled_from(["close", "length", "longer", "shorter", "chunked",
                                "chunked-broken"]))
def test_any_answer_gives_bytes_or_one_source_error(status: str, fields: list[tuple[str, str]],
                                                    body: bytes, encoding: str,
                                                    framing: str) -> None:
    framing_header, framed = _framed(body, framing)
    answer = (f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields)
              + (f"Content-Encoding: {encoding}\r\n" if encoding else "") + framing_header
              + "\r\n").encode("latin-1") + framed

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(answer)
        conn.shutdown(socket.SHUT_WR)

    with raw_server(behave) as (url, _):
        try:
            data = get(url + "/feed", timeout=2.0)
        except SourceError as e:
            assert "\n" not in e.message and e.message
        else:
            assert isinstance(data, bytes) and len(data) <= 1_000_000


def test_serve_retries_a_feed_that_cannot_be_read(tmp_path: Path) -> None:
    """The whole way: a broken feed fails the real pipeline with a SourceError, which the daemon
    retries (`source_attempts`) until the feed is readable again."""
    from conftest import ENV, NOW, base_config, toml_text
    from digest_mailer.pipeline import RunOptions
    from digest_mailer.pipeline import run as run_pipeline
    from digest_mailer.scheduler import Daemon

    answers = iter([head(Content_Encoding="gzip", Content_Length="4") + b"nope",
                    head("301 Moved", Location="/again", Content_Length="0")]
                   + [head("301 Moved", Location="/again", Content_Length="0")] * MAX_REDIRECTS
                   + [head(Content_Length=str(len(FEED))) + FEED] * 10)

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(next(answers))

    with raw_server(behave) as (url, _):
        doc = base_config(tmp_path, source=url + "/feed?day={date}", backend="file")
        doc["source"].update({"lookback_days": 1, "retries": 0, "timeout": 2})
        doc["schedule"] = {"cron": "0 7 * * *", "source_attempts": 3,
                           "source_retry_delay": 0.01}
        path = tmp_path / "c.toml"
        path.write_text(toml_text(doc))
        errors: list[str] = []

        def attempt(config: Config, stop: threading.Event) -> RunReport:
            try:
                return run_pipeline(config, RunOptions(dry_run=True), now=NOW, env=ENV)
            except SourceError as e:
                errors.append(e.message)
                raise

        report = Daemon(config_path=path, run=attempt, now=lambda: NOW,
                        stop=threading.Event()).job()
    assert report is not None and report.fetched == 1
    assert len(errors) == 2
    assert "not valid gzip" in errors[0] and "more than 5 redirects" in errors[1]


def test_a_host_name_is_looked_up_and_connected() -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Length=str(len(FEED))) + FEED)

    with raw_server(behave) as (url, seen):
        assert get(url.replace("127.0.0.1", "localhost") + "/feed") == FEED
    assert b"host: localhost:" in seen[0].lower()


def test_a_dns_lookup_that_hangs_is_cut_at_the_deadline() -> None:
    """No socket timeout covers getaddrinfo; the transport waits for it only until the
    deadline. The resolver stands in for a DNS server that never answers."""
    import httpx

    from digest_mailer.sources.transport import Deadline, DeadlineTransport

    release = threading.Event()

    def hanging(*args: object, **kwargs: object) -> list[object]:
        release.wait(30)
        raise socket.gaierror("too late")

    def failing(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(-2, "Name or service not known")

    deadline = Deadline()
    try:
        with httpx.Client(transport=DeadlineTransport(deadline, hanging)) as client:
            deadline.start(0.5)
            start = time.monotonic()
            with pytest.raises(httpx.TimeoutException, match=r"DNS lookup of feeds\.example"):
                client.get("http://feeds.example/api")
            assert time.monotonic() - start < 2.0
    finally:
        release.set()
    with httpx.Client(transport=DeadlineTransport(deadline, failing)) as client:
        deadline.start(5)
        with pytest.raises(httpx.ConnectError, match=r"cannot resolve feeds\.example"):
            client.get("http://feeds.example/api")


def test_the_cli_prints_one_error_line_with_a_hint(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from conftest import ENV, base_config, toml_text
    from digest_mailer.cli import cli

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head("301 Moved", Location="/loop", Content_Length="0"))

    path = tmp_path / "c.toml"
    with raw_server(behave) as (url, _):
        doc = base_config(tmp_path, source=url + "/loop", backend="file")
        doc["source"].update({"retries": 0, "timeout": 2, "lookback_days": 1})
        path.write_text(toml_text(doc))
        result = CliRunner().invoke(cli, ["run", "--dry-run", "--config", str(path), "--date",
                                          "2025-06-02"], env=ENV)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        f"Error: {url}/loop?date=2025-06-02&p=0&limit=100: more than 5 redirects (a loop?)",
        "Hint: check [source] location in the config"]


# -- the whole fetch has a deadline too ----------------------------------------------------
# Worst case without it (config bounds): 31 days x 50 pages x 11 tries x (600 s + waits): months.
# At the defaults (2 days, 3 retries, 30 s): 2 x 50 x 4 x 30 s, over three hours.

def _fresh_page(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    """A slow server that never runs out of pages: each answer takes 0.3 s and holds a new id."""
    stop.wait(0.3)
    n = abs(hash(request.split(b" ")[1])) % 99_999
    body = json.dumps([{"paper": {"id": f"2506.{n:05d}", "title": "A paper"}}]).encode()
    conn.sendall(head(Content_Length=str(len(body))) + body)


@pytest.mark.parametrize("path", ["/api", "/feed/{date}"])
def test_a_slow_endless_feed_is_cut_at_the_whole_fetch_deadline(path: str) -> None:
    from digest_mailer.sources.http import FETCH_DEADLINE_FACTOR

    with raw_server(_fresh_page) as (url, seen), HttpFetcher(timeout=0.5, retries=3) as http:
        source = open_source(SourceSpec("huggingface", url + path, 31), lambda: http)
        start = time.monotonic()
        with pytest.raises(SourceError) as info:
            source.fetch(RUN)
        elapsed = time.monotonic() - start
    total = 0.5 * FETCH_DEADLINE_FACTOR
    assert f"the whole fetch is over its {total:g}s deadline" in info.value.message
    assert "[source] timeout" in info.value.hint
    assert total - 0.1 <= elapsed < total + 2.0, elapsed
    assert len(seen) < 12


def test_a_429_storm_with_long_retry_after_does_not_wait_past_the_fetch_deadline() -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head("429 Slow", Retry_After="100", Content_Length="0"))

    sleeps: list[float] = []
    with raw_server(behave) as (url, seen), HttpFetcher(timeout=2, retries=10,
                                                        sleep=sleeps.append) as http:
        source = open_source(SourceSpec("huggingface", url + "/api", 1), lambda: http)
        with pytest.raises(SourceError) as info:
            source.fetch(RUN)
    # The first wait (100 s) would already pass the 8 s deadline: no wait, one request.
    assert sleeps == [] and len(seen) == 1
    assert "HTTP 429" in info.value.message and "whole fetch" in info.value.message


def test_retries_with_real_waits_stay_within_the_fetch_deadline() -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head("503 Busy", Retry_After="1", Content_Length="0"))

    with raw_server(behave) as (url, seen), HttpFetcher(timeout=0.5, retries=10) as http:
        source = open_source(SourceSpec("huggingface", url + "/api", 1), lambda: http)
        start = time.monotonic()
        with pytest.raises(SourceError, match="whole fetch"):
            source.fetch(RUN)
        elapsed = time.monotonic() - start
    assert elapsed < 3.5 and 2 <= len(seen) <= 3, (elapsed, len(seen))


def test_a_fetcher_is_ready_for_the_next_fetch_after_one_hit_its_deadline() -> None:
    answers = iter([head("503 Busy", Retry_After="100", Content_Length="0")])

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(next(answers, head(Content_Length=str(len(FEED))) + FEED))

    with raw_server(behave) as (url, _), HttpFetcher(timeout=1, retries=1) as http:
        with pytest.raises(SourceError, match="whole fetch"):
            open_source(SourceSpec("arxiv", url + "/a", 1), lambda: http).fetch(RUN)
        assert http.get(url + "/b") == FEED


@pytest.mark.parametrize("value", ["0", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_a_retry_after_now_or_in_the_past_still_backs_off(value: str) -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head("429 Slow", Retry_After=value, Content_Length="0"))

    sleeps: list[float] = []
    with raw_server(behave) as (url, seen), HttpFetcher(timeout=2, retries=3, backoff=0.25,
                                                        sleep=sleeps.append) as http, \
            pytest.raises(SourceError, match=r"HTTP 429 \(gave up after 4 attempts\)"):
        http.get(url + "/feed")
    assert sleeps == [0.25, 0.5, 1.0] and len(seen) == 4


# -- framing a server can get wrong ----------------------------------------------------------

def _endless_chunks(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while not stop.is_set():
        conn.sendall(b"1\r\n \r\n")
        time.sleep(0.01)


def _endless_102(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
    while not stop.is_set():
        conn.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
        time.sleep(0.005)


def _longer_then_silent(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
    conn.sendall(head(Content_Length=str(len(FEED) + 100)) + FEED)
    stop.wait(5)


@pytest.mark.parametrize("behave", [_endless_chunks, _endless_102, _longer_then_silent])
def test_a_body_or_head_that_never_ends_is_cut_at_the_deadline(behave: Behaviour) -> None:
    with raw_server(behave) as (url, _):
        elapsed, error = timed(url + "/feed", timeout=1.0)
    assert "timed out after 1s" in error.message and elapsed < 3.0


@pytest.mark.parametrize(("answer", "expected"), [
    (head(Content_Length=str(len(FEED) + 100)) + FEED, "peer closed connection without sending"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789",
     "incomplete chunked read"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     "Only Transfer-Encoding: chunked is supported"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n" + FEED,
     "conflicting Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n" + FEED, "bad Content-Length"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "the server broke HTTP"),
    (b"", "Server disconnected without sending a response"),
])
def test_a_broken_frame_is_one_clear_retryable_error(answer: bytes, expected: str) -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(answer)
        conn.shutdown(socket.SHUT_WR)

    with raw_server(behave) as (url, seen):
        _, error = timed(url + "/feed", retries=1)
    assert expected in error.message and "gave up after 2 attempts" in error.message
    assert "\n" not in error.message and len(seen) == 2


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    + head(Content_Length=str(len(FEED))) + FEED,
    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + FEED,  # ends at close
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    + f"{len(FEED):x}\r\n".encode() + FEED + b"\r\n0\r\n\r\n",  # chunked wins (RFC 9112 6.3)
])
def test_odd_but_valid_framing_is_read(answer: bytes) -> None:
    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(answer)
        conn.shutdown(socket.SHUT_WR)

    with raw_server(behave) as (url, _):
        assert get(url + "/feed") == FEED


def test_bytes_past_the_content_length_never_answer_the_next_request() -> None:
    """A connection was reused: the rest of a body longer than its Content-Length was read as
    the next response, breaking it ("illegal request line") or forging it."""
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Length=str(len(FEED)), Connection="keep-alive") + FEED + forged)
        stop.wait(2)

    with raw_server(behave) as (url, seen), HttpFetcher(timeout=2, retries=0) as http:
        assert http.get(url + "/a") == FEED
        assert http.get(url + "/b") == FEED
    assert len(seen) == 2  # one request per connection


def test_redirects_to_new_urls_and_other_hosts_stop_at_the_limit() -> None:
    """Each hop a new URL, alternating between two servers: no loop to spot, still cut."""
    hops: list[str] = []

    def behave(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        hops.append(request.split(b" ")[1].decode())
        target = other if len(hops) % 2 else first
        conn.sendall(head("302 Found", Location=f"{target}/hop{len(hops)}",
                          Content_Length="0"))

    with raw_server(behave) as (first, _), raw_server(behave) as (other, _):
        _, error = timed(first + "/start")
    assert f"more than {MAX_REDIRECTS} redirects" in error.message
    assert len(hops) == MAX_REDIRECTS + 1 and len(set(hops)) == len(hops)


def test_a_redirect_to_another_host_over_http_is_followed() -> None:
    def final(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Length=str(len(FEED))) + FEED)

    with raw_server(final) as (target, _):
        port = target.rsplit(":", 1)[1]

        def moved(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
            conn.sendall(head("301 Moved", Location=f"http://localhost:{port}/feed",
                              Content_Length="0"))

        with raw_server(moved) as (url, _):
            assert get(url + "/old") == FEED


def test_the_cli_prints_one_error_line_when_the_whole_fetch_runs_out(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from conftest import ENV, base_config, toml_text
    from digest_mailer.cli import cli

    def behave(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head("503 Busy", Retry_After="100", Content_Length="0"))

    path = tmp_path / "c.toml"
    with raw_server(behave) as (url, seen):
        doc = base_config(tmp_path, source=url + "/api", backend="file")
        doc["source"].update({"retries": 5, "timeout": 1, "lookback_days": 7})
        path.write_text(toml_text(doc))
        start = time.monotonic()
        result = CliRunner().invoke(cli, ["run", "--dry-run", "--config", str(path), "--date",
                                          "2025-06-02"], env=ENV)
        elapsed = time.monotonic() - start
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: ") and "HTTP 503" in lines[0]
    assert "the whole fetch is over its 4s deadline" in lines[0]
    assert lines[1].startswith("Hint: ") and "[source] timeout" in lines[1]
    assert elapsed < 5 and len(seen) == 1


# -- a proxy from the environment, as the plain httpx client honoured -------------------------

def test_http_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def proxy(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Length=str(len(FEED))) + FEED)

    with raw_server(proxy) as (proxy_url, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy_url.removeprefix("http://"))  # no scheme, as often
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert get("http://feeds.example/api?date=x") == FEED
    assert seen[0].startswith(b"GET http://feeds.example/api?date=x HTTP/1.1")


def test_no_proxy_hosts_are_reached_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Length=str(len(FEED))) + FEED)

    with raw_server(answer) as (url, seen):
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        assert get(url + "/feed") == FEED
    assert seen[0].startswith(b"GET /feed HTTP/1.1")


def test_a_proxy_that_drips_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    def proxy(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        drip(conn, head(Content_Length=str(len(FEED))) + FEED, 0.05, stop)

    with raw_server(proxy) as (proxy_url, _):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        elapsed, error = timed("http://feeds.example/api", timeout=1.0)
    assert "timed out after 1s" in error.message and elapsed < 3.0


def test_no_proxy_matching() -> None:
    from digest_mailer.sources.transport import _bypassed

    assert _bypassed("feeds.example.org", "example.org")
    assert _bypassed("example.org", ".example.org")
    assert _bypassed("x.internal", "*.internal,foo") and _bypassed("anything", "*")
    assert _bypassed("10.0.0.1", "10.0.0.1:8080") and _bypassed("::1", "::1")
    assert not _bypassed("notexample.org", "example.org") and not _bypassed("a.org", "")


# -- HTTPS: the handshake under the deadline, no downgrade to plain http -------------------

@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for 127.0.0.1, and that certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def test_https_is_read_and_a_redirect_to_plain_http_is_refused(
        tls_pair: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    context, cert = tls_pair
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx's own way to trust a CA

    def plain(conn: socket.socket, _: bytes, stop: threading.Event) -> None:
        conn.sendall(head(Content_Length=str(len(FEED))) + FEED)

    with raw_server(plain) as (http_url, plain_seen):
        def secure(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
            if request.startswith(b"GET /feed "):
                conn.sendall(head(Content_Length=str(len(FEED))) + FEED)
            elif request.startswith(b"GET /moved "):
                conn.sendall(head("302 Found", Location="/feed", Content_Length="0"))
            else:
                conn.sendall(head("302 Found", Location=f"{http_url}/feed", Content_Length="0"))

        with raw_server(secure, tls=context) as (https_url, _):
            assert get(https_url + "/feed") == FEED
            assert get(https_url + "/moved") == FEED
            _, error = timed(https_url + "/down")
    assert "redirected from https to plain http" in error.message
    assert error.hint and plain_seen == []  # never asked over plain http


def test_a_tls_handshake_that_stalls_is_cut_at_the_deadline() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:  # accepts, then never answers the ClientHello
        elapsed, error = timed(f"https://127.0.0.1:{listener.getsockname()[1]}/feed",
                               timeout=1.0)
    finally:
        listener.close()
    assert "timed out after 1s" in error.message and elapsed < 3.0
