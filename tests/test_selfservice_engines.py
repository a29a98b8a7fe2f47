"""The store's self-service tables and queries on both engines (a SQLite file, then a fresh
database on the real PostgreSQL test server): nothing in them is SQLite's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

NOW = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)


def test_the_self_service_store_on_both_engines(store_target: Any) -> None:
    from digest_mailer.store.selfservice import SelfService, StoredSubscriber
    from digest_mailer.subscriber_csv import import_rows

    store = SelfService.at(store_target)
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


def test_concurrent_first_writes_for_one_key_never_fail_nor_lose_counts(
        store_target: Any) -> None:
    """On PostgreSQL (READ COMMITTED) two first writes for one key both inserted, and one
    failed on the primary key (a 503); counts read then written back lost hits. SQLite
    serialises writers, and must stay right too. See race_first_writes."""
    from test_selfservice_review import race_first_writes

    from digest_mailer.store.selfservice import SelfService

    with SelfService.at(store_target) as store:
        race_first_writes(store)
