"""The store's self-service tables and queries on a real PostgreSQL (a throw-away cluster
started for this module), the same calls the tests make on SQLite: nothing in them is
SQLite's own. Skips when PostgreSQL's server programs are not installed (Debian's
`postgresql` package; .ci/run can install it)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import free_port

INITDB = shutil.which("initdb") or next(
    (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (test extras)")
pytestmark = pytest.mark.skipif(INITDB is None, reason="PostgreSQL is not installed")

NOW = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    assert INITDB is not None
    bindir = Path(INITDB).parent
    folder = Path(tempfile.mkdtemp(prefix="dm-pg-"))
    user = None
    if os.geteuid() == 0:  # the server refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    data = folder / "data"
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "digest", "--auth=trust",
                    "--no-sync"], check=True, capture_output=True, **run_as)  # type: ignore[arg-type]
    port = free_port()
    server = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                               "-k", str(folder), "-h", "127.0.0.1", "-F"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              **run_as)  # type: ignore[call-overload]
    url = f"postgresql+psycopg://digest@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"postgresql://digest@127.0.0.1:{port}/postgres").close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_self_service_store_on_postgresql(pg_url: str) -> None:
    import sqlalchemy as sa

    from digest_mailer.store.selfservice import SelfService, StoredSubscriber
    from digest_mailer.subscriber_csv import import_rows

    engine = sa.create_engine(pg_url)
    store = SelfService(engine)
    try:
        assert store.revision() == 0
        assert store.put(StoredSubscriber("Ada@example.org", "store", "cli",
                                          topics=("diffusion", "world models"),
                                          frequency="weekly", weekday=4, paused=True), NOW)
        assert not store.put(StoredSubscriber("ada@example.org", "store", "cli",
                                              topics=("robots",)), NOW + timedelta(hours=1))
        got = store.get("ADA@example.org")
        assert got is not None and got.topics == ("robots",) and got.email == "ada@example.org"
        assert got.created_at == NOW  # kept across the update
        assert store.state("ada@example.org") == ("store", False)
        assert store.revision() == 2
        # A sign-up: the mail once an hour, the nonce in the link, the confirmation.
        nonce, mail = store.request("new@example.org", {"topics": ["agents"]}, "n1", NOW,
                                    timedelta(hours=1))
        assert (nonce, mail) == ("n1", True)
        assert store.request("new@example.org", {"topics": ["speech"]}, "n2", NOW,
                             timedelta(hours=1)) == ("n1", False)
        assert store.confirm("new@example.org", "wrong", NOW, in_config=False) is None
        confirmed = store.confirm("new@example.org", "n1", NOW, in_config=False)
        assert confirmed is not None and confirmed.topics == ("speech",)
        counts = store.signup_counts(NOW + timedelta(minutes=1), timedelta(days=2))
        assert counts["confirmed_last_day"] == 1 and counts["pending"] == 0
        # Rate limits: a window of 3, then refused, then a new window.
        hits = [store.hit("b", "s", limit=3, window=60, now=1000.0 + i) for i in range(5)]
        assert hits == [True, True, True, False, False]
        assert store.hit("b", "s", limit=3, window=60, now=1100.0)
        # An import in one transaction, and again (all unchanged).
        rows = [(i + 2, StoredSubscriber(f"r{i}@example.org", "store", "import",
                                         topics=(f"t{i % 7}",))) for i in range(2000)]
        first = import_rows(store, rows, config_keys=frozenset(), suppressed={}, now=NOW)
        assert (first.added, first.updated) == (2000, 0)
        again = import_rows(store, rows, config_keys=frozenset(), suppressed={}, now=NOW)
        assert (again.added, again.updated, len(again.skipped)) == (0, 0, 2000)
        assert len(store.all()) == 2002
        assert store.remove("r0@example.org") and not store.remove("r0@example.org")
    finally:
        store.close()



def test_concurrent_first_writes_for_one_key_never_fail_nor_lose_counts(pg_url: str) -> None:
    """READ COMMITTED: two first writes for one key both insert, and one failed on the
    primary key (a 503); counts read then written back lost hits. See race_first_writes."""
    import sqlalchemy as sa
    from test_selfservice_review import race_first_writes

    from digest_mailer.store.selfservice import SelfService

    store = SelfService(sa.create_engine(pg_url, pool_size=10))
    try:
        race_first_writes(store)
    finally:
        store.close()
