"""Shared fixtures: real captures, a real SMTP server, a real HTTP server, config files."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner, Result

from digest_mailer.models import RunReport, Status

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FIXTURES = REPO / "tests" / "fixtures"
SAMPLE = REPO / "samples" / "daily-papers-sample.json"
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
NO_CAPTURES = ("the real captures are not in ../shared/data (CI puts them there; "
               "tests/fixtures/README.md says more)")
NOW = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)
SECRET = "test-secret-0123456789abcdef"
ENV = {"DIGEST_UNSUBSCRIBE_SECRET": SECRET}


def capture(name: str) -> Path:
    """A real capture from ../shared/data. Without it the calling test skips, for one reason;
    under CI=true it fails, since CI must run everything."""
    path = DATA / name
    if not path.is_file():
        if IN_CI:
            pytest.fail(f"{path}: missing, and CI must run with the real captures",
                        pytrace=False)
        pytest.skip(NO_CAPTURES)
    return path


def feed_fixture(name: str) -> Path:
    """A small feed written for this repository (tests/fixtures/), in a source's real schema."""
    path = FIXTURES / name
    assert path.is_file(), f"{path}: no such fixture"
    return path


# -- config files ------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def toml_text(doc: dict[str, Any]) -> str:
    """Enough TOML for test configs: tables, one nested level, arrays of tables."""
    out: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        out.append(f"[{name}]")
        subs = {k: v for k, v in body.items() if isinstance(v, dict)}
        out.extend(f"{k} = {_toml_value(v)}" for k, v in body.items()
                   if not isinstance(v, dict))
        for k, v in subs.items():
            table(f"{name}.{k}", v)

    for key, value in doc.items():
        if isinstance(value, dict):
            table(key, value)
        elif isinstance(value, list):
            for item in value:
                out.append(f"[[{key}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(out) + "\n"


def invoke_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """`digest-mailer ARGS` in this process, never with a traceback. What it printed is
    printed again, so a failing test's report has all of it: an assertion's message is cut
    short, and the lines cut were the ones that said why (CI, twice)."""
    from digest_mailer.cli import cli

    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    print(f"$ digest-mailer {' '.join(args)}  -> exit {result.exit_code}\n{result.stdout}")
    print(result.stderr, file=sys.stderr)
    assert "Traceback" not in result.output + result.stderr
    return result


def base_config(tmp_path: Path, *, source: Path | str = SAMPLE,
                subscribers: list[dict[str, Any]] | None = None,
                smtp: dict[str, Any] | None = None, backend: str = "smtp",
                **sections: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "newsletter": {"name": "Daily Papers", "from": "Daily Papers <papers@example.org>",
                       "timezone": "UTC"},
        "source": {"kind": "huggingface", "location": str(source), "lookback_days": 2},
        "state": {"path": str(tmp_path / "state.sqlite3")},
        "delivery": {"backend": backend, "out_dir": str(tmp_path / "out"),
                     "smtp": smtp or {"host": "127.0.0.1", "port": 25, "security": "none"}},
        "unsubscribe": {"url": "https://papers.example.org/unsubscribe/{token}",
                        "mailto": "unsubscribe@example.org"},
        "subscribers": subscribers if subscribers is not None else [
            {"email": "ada@example.org", "name": "Ada", "topics": ["diffusion"]},
            {"email": "grace@example.org", "name": "Grace",
             "topics": ["speech recognition", "reinforcement learning"]},
            {"email": "edsger@example.org", "topics": ["formal verification"]},
        ],
    }
    for name, body in sections.items():
        doc[name] = {**doc.get(name, {}), **body}
    return doc


def local_smtp(port: int, **extra: Any) -> dict[str, Any]:
    """[delivery.smtp] for a test server on 127.0.0.1, without TLS."""
    return {"host": "127.0.0.1", "port": port, "security": "none", **extra}


def config_for(tmp_path: Path, smtp: SmtpServer, *, name: str = "digest-mailer.toml",
               delivery: dict[str, Any] | None = None, **kw: Any) -> Path:
    """A config file sending to `smtp`; `delivery` adds [delivery] keys, `kw` goes to
    base_config (subscribers, sections)."""
    doc = base_config(tmp_path, smtp=local_smtp(smtp.port), **kw)
    doc["delivery"].update(delivery or {})
    path = tmp_path / name
    path.write_text(toml_text(doc))
    return path


def go(path: Path, **options: Any) -> RunReport:
    """One real run of the config at `path` on the test date."""
    from digest_mailer.config import load_config
    from digest_mailer.pipeline import RunOptions, run

    return run(load_config(path), RunOptions(run_date=NOW.date(), **options), now=NOW, env=ENV)


def statuses(report: RunReport) -> dict[str, Status]:
    return {o.email: o.status for o in report.outcomes}


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(doc: dict[str, Any] | None = None, name: str = "digest-mailer.toml",
              **kwargs: Any) -> Path:
        path = tmp_path / name
        path.write_text(toml_text(doc if doc is not None else base_config(tmp_path, **kwargs)))
        return path

    return write


# -- SMTP --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class SmtpHandler:
    """Records what it receives. `refuse` maps an address to the reply its RCPT always gets;
    `rcpt_script` to the replies its next RCPTs get, one each; `data_script` holds the replies
    the next DATA commands get ("DROP" closes the connection instead of answering)."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    rcpt_script: dict[str, list[str]] = field(default_factory=dict)
    data_script: list[str] = field(default_factory=list)
    data_delay: float = 0.0  # seconds each DATA takes: a slow server
    sessions: set[int] = field(default_factory=set)
    logins: list[str] = field(default_factory=list)
    # Offer PIPELINING (RFC 2920), as Postfix and smtp-sink do: aiosmtpd reads commands a line
    # at a time, so commands that arrive together are answered in order.
    pipelining: bool = False

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.sessions.add(id(session))
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        if self.rcpt_script.get(address):
            return self.rcpt_script[address].pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_script:
            reply = self.data_script.pop(0)
            if reply == "DROP":
                server.transport.close()
                return "250 never seen"
            return reply
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content or envelope.content))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]


@dataclass
class SmtpServer:
    handler: SmtpHandler
    port: int


def start_smtp(handler: SmtpHandler, **kwargs: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, port


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    handler = SmtpHandler()
    controller, port = start_smtp(handler)
    try:
        yield SmtpServer(handler, port)
    finally:
        controller.stop()


# -- HTTP --------------------------------------------------------------------------------

@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class HttpServer:
    base: str
    requests: list[Request]
    routes: dict[str, Callable[[Request], Reply]]


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    requests: list[Request] = []
    routes: dict[str, Callable[[Request], Reply]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            req = Request(parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()},
                          {k.lower(): v for k, v in self.headers.items()})
            requests.append(req)
            route = routes.get(parts.path)
            status, headers, body = route(req) if route else (404, {}, b"not found")
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpServer(f"http://127.0.0.1:{server.server_address[1]}", requests, routes)
    finally:
        server.shutdown()
        server.server_close()


def slow(seconds: float, reply: Reply) -> Callable[[Request], Reply]:
    def route(_req: Request) -> Reply:
        time.sleep(seconds)
        return reply

    return route



def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What a test recorded as its `log` property (figures such as the judged set's), shown
    in the summary: the one place a pytest-xdist worker's output reaches."""
    for report in terminalreporter.stats.get("passed", []):
        for name, value in getattr(report, "user_properties", []):
            if name == "log":
                terminalreporter.write_line(f"{report.nodeid}:\n{value}")

# -- the ledger on both engines -----------------------------------------------------------

PG_ENV = "DIGEST_MAILER_TEST_PG"
NO_POSTGRESQL = ("no PostgreSQL server binaries here (install Debian's `postgresql`, or set "
                 f"{PG_ENV} to a server's URL; .ci/run does both)")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server's URL: $DIGEST_MAILER_TEST_PG (.ci/run starts one), or a
    throwaway cluster of this session's own. Without a server the PostgreSQL half skips, for
    one reason; under CI=true it fails instead."""
    url = os.environ.get(PG_ENV, "").strip()
    if url:
        yield url
        return
    import pgcluster

    if pgcluster.bindir() is None:
        if IN_CI:
            pytest.fail(f"{NO_POSTGRESQL}; CI must run the PostgreSQL half", pytrace=False)
        pytest.skip(NO_POSTGRESQL)
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="digest-pg-"))
    try:
        yield pgcluster.start(root)
    finally:
        pgcluster.stop(root)


def _admin(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/postgres"


@contextmanager
def fresh_pg_database(server: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_admin(server), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(_admin(server), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Where a store test's ledger lives: a SQLite file, then a fresh PostgreSQL database."""
    from digest_mailer.store import StoreTarget

    if request.param == "sqlite":
        yield StoreTarget.sqlite(tmp_path / "state.sqlite3")
        return
    server = request.getfixturevalue("pg_server")
    with fresh_pg_database(server) as url:
        yield StoreTarget.parse(url)


class _Node:
    other: _Node | None = None


def waiting_garbage() -> list[bool]:
    """A cycle nothing refers to: only the collector frees it; the list says when it has."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone: list[bool] = []
    weakref.finalize(a, gone.append, True)
    return gone
