"""`check` refuses every config a run would refuse, for the same reasons, through the one
code path that `run` and `serve` use too; `check --smtp` tries the server without sending."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import Result

from conftest import (
    ENV,
    NOW,
    SmtpHandler,
    base_config,
    invoke_cli,
    local_smtp,
    start_smtp,
    toml_text,
)
from digest_mailer.config import load_config
from digest_mailer.errors import ConfigError, DigestMailerError
from digest_mailer.pipeline import RunOptions, run


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return invoke_cli(*args, env=env)


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "digest-mailer.toml"
    path.write_text(toml_text(doc))
    return path


def private(path: Path, text: str = "s3cret\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _subject(doc: dict[str, Any], tmp: Path, value: str) -> None:
    doc["newsletter"]["subject"] = value


def _custom(doc: dict[str, Any], tmp: Path, name: str, text: str) -> None:
    folder = tmp / "tpl"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    doc["newsletter"]["templates_dir"] = str(folder)


def _custom_bytes(doc: dict[str, Any], tmp: Path, data: bytes | None) -> None:
    """digest.txt.j2 in templates_dir as these bytes; None: a FIFO; b"": a folder."""
    folder = tmp / "tpl"
    folder.mkdir(exist_ok=True)
    target = folder / "digest.txt.j2"
    if data is None:
        os.mkfifo(target, 0o600)
    elif not data:
        target.mkdir()
    else:
        target.write_bytes(data)
    doc["newsletter"]["templates_dir"] = str(folder)


def _key(tmp: Path, kind: str) -> Path:
    """A private key in PEM of a kind DKIM signing cannot use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if kind == "rsa512":  # the library refuses to make one; openssl still does
        pem = subprocess.run(["openssl", "genrsa", "512"], capture_output=True, check=True
                             ).stdout
    else:
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
    return private(tmp / f"{kind}.pem", pem.decode())


def _fifo(tmp: Path) -> Path:
    path = tmp / "fifo"
    os.mkfifo(path, 0o600)
    return path


# (what is wrong, how to break the config, what the Error line says, what the hint says)
BROKEN: list[tuple[str, Callable[[dict[str, Any], Path], None], str, str]] = [
    ("subject syntax", lambda d, t: _subject(d, t, "{{ newsletter }: {{ count }}"),
     r"newsletter\.subject: template syntax error", "fix newsletter.subject"),
    ("subject unknown name", lambda d, t: _subject(d, t, "{{ cuont }} papers"),
     r"newsletter\.subject: rendering failed: UndefinedError: 'cuont' is undefined",
     "fix newsletter.subject"),
    ("custom template syntax", lambda d, t: _custom(d, t, "digest.txt.j2", "{% for %}\n"),
     r"tpl/digest\.txt\.j2:1: template syntax error", "overrides the shipped template"),
    ("custom template name", lambda d, t: _custom(d, t, "digest.mjml.j2", "{{ nope.x }}\n"),
     r"tpl/digest\.mjml\.j2:1: rendering failed: UndefinedError", "tpl/digest.mjml.j2"),
    ("custom subject file", lambda d, t: _custom(d, t, "subject.txt.j2", "{{ count|nofilter }}"),
     r"tpl/subject\.txt\.j2:1: template syntax error: No filter named 'nofilter'",
     "subject.txt.j2"),
    ("missing templates_dir",
     lambda d, t: d["newsletter"].update(templates_dir=str(t / "nope")),
     r"newsletter\.templates_dir: .*nope does not exist", "remove newsletter.templates_dir"),
    ("missing DKIM key", lambda d, t: d["delivery"].update(dkim={
        "domain": "example.org", "selector": "s", "key_file": str(t / "none.pem")}),
     r"none\.pem \(delivery\.dkim\.key_file\): the DKIM key file does not exist",
     "fix delivery.dkim.key_file"),
    ("DKIM key not a key", lambda d, t: d["delivery"].update(dkim={
        "domain": "example.org", "selector": "s",
        "key_file": str(private(t / "k.pem", "not a key"))}),
     r"k\.pem \(delivery\.dkim\.key_file\): not an RSA private key in PEM", "openssl genrsa"),
    ("DKIM key a folder", lambda d, t: d["delivery"].update(dkim={
        "domain": "example.org", "selector": "s", "key_file": str(t)}),
     r"delivery\.dkim\.key_file\): the DKIM key is not a regular file", "point"),
    ("password_file 644", lambda d, t: d["delivery"]["smtp"].update(
        username="u", security="starttls",
        password_file=str(private(t / "pw", mode=0o644))),
     r"pw \(delivery\.smtp\.password_file\): the SMTP password is readable by others",
     "chmod 600"),
    ("password_file FIFO", lambda d, t: d["delivery"]["smtp"].update(
        username="u", security="starttls", password_file=str(_fifo(t))),
     r"fifo \(delivery\.smtp\.password_file\): the SMTP password is not a regular file",
     "point delivery.smtp.password_file"),
    ("password_file empty", lambda d, t: d["delivery"]["smtp"].update(
        username="u", security="starttls", password_file=str(private(t / "pw", ""))),
     r"pw \(delivery\.smtp\.password_file\): the file is empty", "write the SMTP password"),
    ("login without TLS", lambda d, t: d["delivery"]["smtp"].update(username="u"),
     r"delivery\.smtp\.username is 'u' with security = 'none'", "starttls"),
    ("missing source file",
     lambda d, t: d["source"].update(location=str(t / "feed.json")),
     r"source\.location: .*feed\.json: no such file", "fix [source] location"),
    ("state is a folder", lambda d, t: d["state"].update(path=str(t)),
     r"state\.path: .* is a folder, not the ledger file", "point [state] path at a file"),
    ("state under a file", lambda d, t: d["state"].update(
        path=str(private(t / "plain") / "state.sqlite3")),
     r"state\.path: .*plain is not a folder", "fix [state] path"),
    ("ca_file not certificates", lambda d, t: d["delivery"]["smtp"].update(
        ca_file=str(private(t / "ca.pem", "not a certificate"))),
     r"delivery\.smtp\.ca_file: .*ca\.pem: not PEM certificates", "fix delivery.smtp.ca_file"),
    ("cron never fires", lambda d, t: d.update(schedule={"cron": "0 7 30 2 *"}),
     r"schedule\.cron: '0 7 30 2 \*' never fires", "config.example.toml"),
    ("misfire_grace overflows", lambda d, t: d.update(
        schedule={"misfire_grace": "99999999999999d"}),
     r"schedule\.misfire_grace: .* less than or equal to 604800", "config.example.toml"),
    ("misfire_grace huge integer", lambda d, t: d.update(
        schedule={"misfire_grace": 10 ** 400}),
     r"schedule\.misfire_grace: a number of seconds far too large", "config.example.toml"),
    ("retry_delay inf", lambda d, t: d["delivery"].update(retry_delay=float("inf")),
     r"delivery\.retry_delay: inf is not valid: input should be a finite number",
     "config.example.toml"),
    ("doubling past a day", lambda d, t: d["delivery"].update(retry_attempts=10,
                                                               retry_delay="1h"),
     r"delivery: delivery\.retry_attempts = 10 with retry_delay = 3600s waits 1023h",
     "config.example.toml"),
    ("rate_limit inf", lambda d, t: d["delivery"]["smtp"].update(rate_limit=float("inf")),
     r"delivery\.smtp\.rate_limit: inf is not valid", "config.example.toml"),
    # Found by the check-review: each passed check, then a run stopped with a traceback or
    # sent malformed headers.
    ("from an international domain", lambda d, t: d["newsletter"].update(
        {"from": "Zoë Papers <papers@exämple.org>"}),
     r"newsletter\.from: .*write the domain in its ASCII form \('papers@xn--exmple-cua\.org'\)",
     "config.example.toml"),
    ("from a non-ASCII local part", lambda d, t: d["newsletter"].update(
        {"from": "P <päpers@example.org>"}),
     r"newsletter\.from: .*the part before the @ is not ASCII", "config.example.toml"),
    ("envelope_from international", lambda d, t: d["delivery"]["smtp"].update(
        envelope_from="b@exämple.org"),
     r"delivery\.smtp\.envelope_from: .*ASCII form", "config.example.toml"),
    ("mailto with a query", lambda d, t: d["unsubscribe"].update(mailto="a?b=c@example.org"),
     r"unsubscribe\.mailto: .*would change the mailto: link", "config.example.toml"),
    ("list_id with a space", lambda d, t: d["newsletter"].update(list_id="my list.example.org"),
     r"newsletter\.list_id: 'my list\.example\.org' is not a list id", "config.example.toml"),
    ("list_id with brackets", lambda d, t: d["newsletter"].update(list_id="a>b<c.org"),
     r"newsletter\.list_id: .* is not a list id", "config.example.toml"),
    ("list_id non-ASCII", lambda d, t: d["newsletter"].update(list_id="lïst.example.org"),
     r"newsletter\.list_id: .* is not a list id", "config.example.toml"),
    ("unsubscribe over http", lambda d, t: d["unsubscribe"].update(
        url="http://x.example.org/u/{token}"),
     r"unsubscribe\.url: .* is not https", "config.example.toml"),
    ("token in the host", lambda d, t: d["unsubscribe"].update(
        url="https://{token}.example.org/u"),
     r"unsubscribe\.url: .*belongs in the path or the query", "config.example.toml"),
    ("unsubscribe url breaking the header", lambda d, t: d["unsubscribe"].update(
        url="https://x.example.org/u/{token}>,<https://evil.example/"),
     r"unsubscribe\.url: .*characters a URL cannot carry", "config.example.toml"),
    ("from two mailboxes", lambda d, t: d["newsletter"].update(
        {"from": "a@example.org, b@example.org"}),
     r"newsletter\.from: .* holds several addresses; From takes one", "config.example.toml"),
    ("from a group", lambda d, t: d["newsletter"].update({"from": "G: a@example.org;"}),
     r"newsletter\.from: .* is not an address like", "config.example.toml"),
    ("from an unquoted comma", lambda d, t: d["newsletter"].update(
        {"from": "Papers, Inc <papers@example.org>"}),
     r"newsletter\.from: .*quote a name with a comma", "config.example.toml"),
    ("token in the fragment", lambda d, t: d["unsubscribe"].update(
        url="https://x.example.org/u#{token}"),
     r"unsubscribe\.url: .*belongs in the path or the query", "config.example.toml"),
    ("template includes an absolute path", lambda d, t: _custom(
        d, t, "digest.txt.j2", "{% include '/etc/passwd' %}\n"),
     r"tpl/digest\.txt\.j2: it uses the template '/etc/passwd', which is not in",
     "overrides the shipped template"),
    ("template imports a missing file", lambda d, t: _custom(
        d, t, "digest.txt.j2", "{% if count > 999 %}{% import 'macros.j2' as m %}"
                               "{% endif %}x\n"),
     r"tpl/digest\.txt\.j2: it uses the template 'macros\.j2', which is not in",
     "overrides the shipped template"),
    ("template not UTF-8", lambda d, t: _custom_bytes(d, t, "caf\xe9 {{ count }}\n".encode(
        "latin-1")),
     r"tpl/digest\.txt\.j2: not UTF-8 text \(byte 3\)", "or remove it"),
    ("template a FIFO", lambda d, t: _custom_bytes(d, t, None),
     r"tpl/digest\.txt\.j2: not a regular file", "or remove it"),
    ("template a folder", lambda d, t: _custom_bytes(d, t, b""),
     r"tpl/digest\.txt\.j2: not a regular file", "or remove it"),
    ("template too large", lambda d, t: _custom_bytes(d, t, b"x" * 1_500_000),
     r"tpl/digest\.txt\.j2: 1,500,000 bytes, over the 1,000,000", "or remove it"),
    ("ca_file a FIFO", lambda d, t: d["delivery"]["smtp"].update(ca_file=str(_fifo(t))),
     r"delivery\.smtp\.ca_file: .*fifo: not a regular file", "fix delivery.smtp.ca_file"),
    ("template nested too deeply", lambda d, t: _custom(
        d, t, "digest.txt.j2", "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}\n"),
     r"tpl/digest\.txt\.j2: nested too deeply to compile", "overrides the shipped template"),
    ("subject nested too deeply", lambda d, t: _subject(d, t, "{{ " + "[" * 3000 + "]" * 3000
                                                        + " }}"),
     r"newsletter\.subject: nested too deeply to compile", "fix newsletter.subject"),
    ("newsletter name with angle brackets", lambda d, t: d["newsletter"].update(
        name="Papers <beta>"),
     r"newsletter\.name: 'Papers <beta>' has an angle bracket, which breaks the List-Id",
     "config.example.toml"),
    ("DKIM selector adds a tag", lambda d, t: d["delivery"].update(dkim={
        "domain": "example.org", "selector": "s; x=1",
        "key_file": str(private(t / "k.pem", "x"))}),
     r"delivery\.dkim\.selector: 's; x=1' is not a DNS name", "config.example.toml"),
    ("DKIM key not RSA", lambda d, t: d["delivery"].update(dkim={
        "domain": "example.org", "selector": "s", "key_file": str(_key(t, "ec"))}),
     r"ec\.pem \(delivery\.dkim\.key_file\): not an RSA private key in PEM", "openssl genrsa"),
    ("DKIM key too short", lambda d, t: d["delivery"].update(dkim={
        "domain": "example.org", "selector": "s", "key_file": str(_key(t, "rsa512"))}),
     r"rsa512\.pem \(delivery\.dkim\.key_file\): the RSA key has 512 bits", "openssl genrsa"),
    ("subject renders empty", lambda d, t: _subject(d, t, "{{ '' }}  "),
     r"newsletter\.subject: the subject renders empty", "no subject"),
    ("text template renders empty", lambda d, t: _custom(d, t, "digest.txt.j2", "{# no #}\n"),
     r"tpl/digest\.txt\.j2: renders nothing", "overrides the shipped template"),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_check_refuses_what_a_run_refuses(tmp_path: Path, case: tuple[Any, ...]) -> None:
    _what, breaks, error, hint = case
    doc = base_config(tmp_path)
    breaks(doc, tmp_path)
    path = write(tmp_path, doc)
    started = time.monotonic()
    result = invoke("check", "--config", str(path), env=ENV)
    assert time.monotonic() - started < 20  # a FIFO must not hang it
    assert result.exit_code == 1, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    hints = [line for line in result.stderr.splitlines() if line.startswith("Hint: ")]
    assert len(errors) == 1, result.stderr
    assert re.search(error, errors[0]), errors[0]
    assert any(hint in h for h in hints), hints
    # A subject or a password file is blamed, never the templates_dir or an env variable.
    if "subject" in _what:
        assert "templates_dir" not in result.stderr
    if "password_file" in _what:
        assert "$DIGEST_SMTP_PASSWORD" not in result.stderr
    # And the run refuses for the same reason, before anything is fetched or sent.
    dry = invoke("run", "--config", str(path), "--dry-run", env=ENV)
    assert dry.exit_code == 1
    assert errors[0] in dry.stderr.splitlines()
    assert not (tmp_path / "out").exists()


def test_a_valid_config_says_what_it_sets_up(tmp_path: Path) -> None:
    path = write(tmp_path, base_config(tmp_path))
    result = invoke("check", "--config", str(path), env=ENV)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: OK"
    assert "schedule: '0 7 * * *' in UTC, next run " in result.stdout
    assert any(line.startswith("templates: shipped; a sample email renders, subject "
                               "'Daily Papers: 2 new papers") for line in lines)
    assert not any(line.startswith("warning:") for line in lines)


def test_every_problem_is_listed_with_its_hint(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["newsletter"]["subject"] = "{{ cuont }}"
    doc["state"]["path"] = str(tmp_path)
    doc["source"]["location"] = str(tmp_path / "missing.json")
    result = invoke("check", "--config", str(write(tmp_path, doc)), env=ENV)
    lines = result.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Error"] * 3 + ["Hint"] * 3


def test_the_run_refuses_before_it_fetches_or_sends(tmp_path: Path, http_server: Any,
                                                    smtp_server: Any) -> None:
    doc = base_config(tmp_path, source=f"{http_server.base}/api/daily_papers",
                      smtp=local_smtp(smtp_server.port))
    doc["newsletter"]["subject"] = "{{ cuont }}"
    config = load_config(write(tmp_path, doc))
    with pytest.raises(ConfigError, match="cuont"):
        run(config, RunOptions(), now=NOW, env=ENV)
    assert http_server.requests == [] and smtp_server.handler.received == []
    assert not config.state_path.exists()


def test_serve_refuses_to_start_and_skips_a_reload(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from digest_mailer.scheduler import Daemon

    doc = base_config(tmp_path)
    doc["newsletter"]["subject"] = "{{ cuont }}"
    path = write(tmp_path, doc)
    daemon = Daemon(config_path=path, run=lambda config, stop: None,  # type: ignore[arg-type,return-value]
                    now=lambda: NOW, stop=threading.Event())
    assert daemon.load() is None
    assert "cuont" in caplog.text
    assert daemon.job() is None


# -- check --smtp ------------------------------------------------------------------------

def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                   auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and \
        (auth_data.login, auth_data.password) == (b"mailer", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[tuple[SmtpHandler, int]]:
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    handler = SmtpHandler()
    controller, port = start_smtp(handler, tls_context=ctx, require_starttls=True,
                                  authenticator=_authenticator, auth_required=False)
    try:
        yield handler, port
    finally:
        controller.stop()


def _smtp_config(tmp_path: Path, ca: trustme.CA, port: int, password: str) -> Path:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pw = private(tmp_path / "pw", password + "\n")
    return write(tmp_path, base_config(tmp_path, smtp={
        "host": "127.0.0.1", "port": port, "security": "starttls", "username": "mailer",
        "password_file": str(pw), "ca_file": str(ca_file)}))


def test_check_smtp_logs_in_over_starttls_and_sends_nothing(
        tmp_path: Path, ca: trustme.CA, tls_server: tuple[SmtpHandler, int]) -> None:
    handler, port = tls_server
    result = invoke("check", "--smtp", "--config",
                    str(_smtp_config(tmp_path, ca, port, "s3cret")), env=ENV)
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("smtp:")]
    assert lines[0] == f"smtp: connected to 127.0.0.1:{port}, EHLO 250"
    assert lines[1].startswith("smtp: TLS TLSv1.") and "certificate verified" in lines[1]
    assert lines[2:] == ["smtp: logged in as 'mailer'", "smtp: QUIT; no mail was sent"]
    assert handler.received == []


def test_check_smtp_says_when_the_login_is_refused(
        tmp_path: Path, ca: trustme.CA, tls_server: tuple[SmtpHandler, int]) -> None:
    _handler, port = tls_server
    result = invoke("check", "--smtp", "--config",
                    str(_smtp_config(tmp_path, ca, port, "wrong")), env=ENV)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"Error: SMTP 127.0.0.1:{port}: login as 'mailer' refused (535")
    assert lines[1] == ("Hint: check delivery.smtp.username and the password in "
                        "delivery.smtp.password_file")


def test_check_smtp_over_implicit_tls_and_an_unverified_certificate(
        tmp_path: Path, ca: trustme.CA) -> None:
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    handler = SmtpHandler()
    controller, port = start_smtp(handler, ssl_context=ctx)
    try:
        path = _smtp_config(tmp_path, ca, port, "s3cret")
        text = path.read_text().replace('security = "starttls"', 'security = "ssl"')
        path.write_text(text.replace('username = "mailer"\n', "").replace(
            f'password_file = "{tmp_path / "pw"}"\n', ""))
        ok = invoke("check", "--smtp", "--config", str(path), env=ENV)
        assert ok.exit_code == 0, ok.stderr
        assert f"smtp: connected to 127.0.0.1:{port} over TLS, EHLO 250" in ok.stdout
        assert "smtp: no login (delivery.smtp.username is empty)" in ok.stdout
        path.write_text(path.read_text().replace(f'ca_file = "{tmp_path / "ca.pem"}"\n', ""))
        bad = invoke("check", "--smtp", "--config", str(path), env=ENV)
        assert bad.exit_code == 1
        assert "the server's certificate does not verify" in bad.stderr.splitlines()[0]
    finally:
        controller.stop()
    assert handler.received == []


def test_check_says_which_templates_are_rendered_per_subscriber(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["newsletter"]["subject"] = "Hi {{ name|title }}"
    result = invoke("check", "--config", str(write(tmp_path, doc)), env=ENV)
    assert result.exit_code == 0, result.stderr
    assert ("templates rendered for each subscriber alone (slower: they change name, email or "
            "unsubscribe_url): newsletter.subject") in result.stdout.splitlines()
    assert "subject \"Hi Ada O'" in result.stdout  # the sample subject, with the real name


# -- check --smtp against servers that misbehave -----------------------------------------------

def _bad_smtp(mode: str) -> tuple[socket.socket, threading.Event]:
    """A hand-written SMTP server on 127.0.0.1 that misbehaves one way per `mode`."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def session(conn: socket.socket) -> None:
        f = conn.makefile("rb")

        def say(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        with conn:
            if mode == "silent":
                stop.wait(60)
                return
            if mode == "drip":  # a byte every 0.2 s, never a whole line
                while not stop.is_set():
                    conn.sendall(b"2")
                    stop.wait(0.2)
                return
            say("220 bad.example ESMTP")
            for raw in f:
                verb = raw.decode(errors="replace").strip().upper()
                if verb.startswith("EHLO"):
                    extensions = {"noauth": [], "tls-fails": ["STARTTLS"],
                                  "tls-refused": ["STARTTLS"]}[mode]
                    say("250-bad.example")
                    for ext in extensions:
                        say(f"250-{ext}")
                    say("250 8BITMIME")
                elif verb == "STARTTLS" and mode == "tls-refused":
                    say("454 4.7.0 TLS not available")
                elif verb == "STARTTLS":
                    say("220 go ahead")
                    conn.sendall(b"this is not a TLS handshake\r\n" * 4)
                    return
                elif verb == "QUIT":
                    say("221 bye")
                    return
                else:
                    say("502 no")

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=session, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener, stop


BAD_SERVERS = [
    # mode, security, username, the Error line
    ("silent", "none", "", r"no answer within 0\.25 s \(at connect\)"),
    ("drip", "none", "", r"no complete answer within 2 s \(at connect\)"),
    ("noauth", "none", "", None),  # no login wanted: fine
    ("noauth", "starttls", "", r"the server does not offer STARTTLS"),
    ("tls-fails", "starttls", "mailer", r"STARTTLS failed \("),
    ("tls-refused", "starttls", "mailer", r"STARTTLS failed \(\(454, b'4\.7\.0 TLS not"),
]


@pytest.mark.parametrize("case", BAD_SERVERS, ids=[f"{c[0]}-{c[1]}" for c in BAD_SERVERS])
def test_check_smtp_against_a_misbehaving_server(tmp_path: Path, case: tuple[Any, ...]) -> None:
    mode, security, username, error = case
    listener, stop = _bad_smtp(mode)
    try:
        doc = base_config(tmp_path, smtp={"host": "127.0.0.1", "port": listener.getsockname()[1],
                                          "security": security, "username": username,
                                          "timeout": 0.25})
        path = write(tmp_path, doc)
        started = time.monotonic()
        result = invoke("check", "--smtp", "--config", str(path),
                        env={**ENV, "DIGEST_SMTP_PASSWORD": "pw"})
        took = time.monotonic() - started
    finally:
        stop.set()
        listener.close()
    assert took < 15, took  # 8 commands x 0.25 s, on a loaded machine
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    if error is None:
        assert result.exit_code == 0, result.stderr
        assert "smtp: QUIT; no mail was sent" in result.stdout
        return
    assert result.exit_code == 1
    assert len(errors) == 1, result.stderr
    assert re.search(error, errors[0]), errors[0]


def test_check_smtp_with_a_login_the_server_does_not_offer(tmp_path: Path) -> None:
    listener, stop = _bad_smtp("noauth")
    try:
        doc = base_config(tmp_path, smtp=local_smtp(listener.getsockname()[1], timeout=2))
        path = write(tmp_path, doc)
        from digest_mailer.checkup import probe_smtp

        config = load_config(path)
        smtp = config.delivery.smtp.model_copy(update={"username": "mailer"})
        config = config.model_copy(update={"delivery": config.delivery.model_copy(
            update={"smtp": smtp})})
        with pytest.raises(DigestMailerError, match=r"the server offers no login \(no AUTH"):
            probe_smtp(config, {"DIGEST_SMTP_PASSWORD": "pw"})
    finally:
        stop.set()
        listener.close()


@pytest.fixture
def read_only_ledger(tmp_path: Path) -> Iterator[Path]:
    """An existing ledger on a read-only file system when root (who ignores permission
    bits), else in a folder without write permission."""
    folder = tmp_path / "ro"
    folder.mkdir()
    ledger = folder / "state.sqlite3"
    if os.geteuid() != 0:
        ledger.write_bytes(b"")
        folder.chmod(0o500)
        yield ledger
        folder.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"root cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        ledger.write_bytes(b"")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield ledger
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_ledger_that_cannot_be_written_is_refused_by_check_and_run(
        tmp_path: Path, read_only_ledger: Path) -> None:
    """It passed check, then the run stopped on an OSError traceback from the lock."""
    doc = base_config(tmp_path, backend="file")
    doc["state"]["path"] = str(read_only_ledger)
    path = write(tmp_path, doc)
    for command in (["check"], ["run", "--date", "2025-06-02"]):
        result = invoke(*command, "--config", str(path), env=ENV)
        assert result.exit_code == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, result.stderr
        assert re.search(r"state\.path: .*ro.* is not writable \(a read-only file system or "
                         r"permissions\)", errors[0]), errors[0]


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_config_that_is_not_a_file_is_one_error_line(tmp_path: Path, kind: str) -> None:
    """A FIFO (or /dev/zero) given as --config blocked check and run for ever."""
    path = {"fifo": lambda: _fifo(tmp_path), "device": lambda: Path("/dev/zero"),
            "folder": lambda: tmp_path}[kind]()
    for command in (["check"], ["run", "--dry-run"]):
        started = time.monotonic()
        result = invoke(*command, "--config", str(path), env=ENV)
        assert time.monotonic() - started < 20
        assert result.exit_code == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and re.search(
            r": (not a regular file|cannot read: Is a directory)", errors[0]), result.stderr
