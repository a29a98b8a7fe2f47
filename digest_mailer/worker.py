"""`digest-mailer send`: a worker that sends from the shared outbox, on any number of hosts
(PostgreSQL) or beside the runs on one host (SQLite). It composes nothing: it takes the rows
any run left due, with a lease it renews while it works (lease.py), checks the truth at send
time, sends over its own connection(s) at its own pace (`[delivery.smtp] rate_limit` per
connection), and records each fate in one commit, as a run's own senders do (dispatch.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from digest_mailer import credentials
from digest_mailer.config import Config
from digest_mailer.dispatch import Policy, SenderSpec
from digest_mailer.message import DkimSigner
from digest_mailer.pipeline import backend_options
from digest_mailer.senders import Senders
from digest_mailer.store import Ledger
from digest_mailer.truth import Roster

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkResult:
    died: tuple[str, ...]  # senders that ended badly (the cause is in the log)
    stopped: bool  # asked to stop (SIGTERM/SIGINT), not the queue run dry


def worker_spec(config: Config, env: Mapping[str, str]) -> SenderSpec:
    d = config.delivery
    dk = d.dkim
    signer = DkimSigner(dk.domain, dk.selector, credentials.read_private_file(
        config.resolve(dk.key_file), "DKIM key")) if dk else None
    roster = Roster.of_config(config)
    return SenderSpec(ledger=str(config.state_path), run_id=0, backend=d.backend,
                      options=backend_options(config, env, None),
                      policy=Policy(retry_attempts=d.retry_attempts, retry_delay=d.retry_delay,
                                    max_hard_failures=d.max_hard_failures),
                      signer=signer, roster=roster, timeout=d.smtp.timeout,
                      log_level=logging.getLogger().getEffectiveLevel(),
                      store=config.state_target, lease=d.lease, worker=True)


def work(config: Config, *, env: Mapping[str, str], stop: threading.Event,
         connections: int | None = None, until_empty: bool = False) -> WorkResult:
    """Sends until `stop` is set (each connection finishes the message on its wire, the rest
    goes back to the queue), or, `until_empty`, until nothing is left that may go out now."""
    spec = worker_spec(config, env)
    count = config.delivery.smtp.connections if connections is None else connections
    if config.delivery.backend != "smtp":
        count = 0
    with Ledger.open(config.state_target) as ledger:  # brings the schema up to date first
        senders = Senders(spec, count)
        logger.info("sending from %s with %d connection(s)%s", config.state_target.label,
                    max(count, 1), ", until the outbox is empty" if until_empty else "")
        if until_empty:
            senders.composed()
        senders.wait(ledger, stop.is_set)
    return WorkResult(tuple(senders.died), stop.is_set())
