"""`serve`: APScheduler wiring, catch-up on start, and the retry of a source that is down.

The rules (cron.py: which fire was missed; here: when to retry) are plain functions of an
injected clock; the Daemon only connects them to APScheduler, signals and the pipeline.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from digest_mailer.cron import missed_fire, next_fire, parse_cron
from digest_mailer.errors import DigestMailerError, SourceError
from digest_mailer.heap import tidy

if TYPE_CHECKING:
    from digest_mailer.config import Config
    from digest_mailer.models import RunReport

logger = logging.getLogger(__name__)

def retry_delays(attempts: int, first_delay: float) -> list[float]:
    """Waits between tries of a source that is down: first_delay, doubling."""
    return [first_delay * 2 ** n for n in range(max(attempts - 1, 0))]


@dataclass
class Daemon:
    """Runs the digest on the config's schedule until stopped. `run` does one run (the
    pipeline, in production); `now` and `stop` are passed in so tests can drive it."""

    config_path: Path
    run: Callable[[Config, threading.Event], RunReport]
    now: Callable[[], datetime]
    stop: threading.Event
    on_report: Callable[[RunReport], None] = lambda report: None
    lead: Callable[[], bool] = lambda: True  # whether this instance composes (serving.py)

    def load(self) -> Config | None:
        from digest_mailer.preflight import load_runnable

        try:
            return load_runnable(self.config_path, os.environ, now=self.now())
        except DigestMailerError as e:
            logger.error("config: %s; this run is skipped, the daemon keeps serving", e)
            return None

    def first_load(self) -> Config:
        """At start an invalid config is the one error, said once: nothing is served yet."""
        from digest_mailer.config import load_config

        return load_config(self.config_path)

    def job(self) -> RunReport | None:
        """One scheduled run: a fresh config, and a few tries while the source is down or
        empty. Nothing here raises: a failed run is logged and the schedule goes on. After
        it, what the run and the config it replaced left behind is collected."""
        try:
            return self._job()
        finally:
            tidy()

    def _job(self) -> RunReport | None:
        if not self.lead():
            logger.info("another serve leads: it composes this run; this one only sends")
            return None
        config = self.load()
        if config is None:
            return None
        delays = retry_delays(config.schedule.source_attempts,
                              config.schedule.source_retry_delay)
        for attempt in range(len(delays) + 1):
            try:
                report = self.run(config, self.stop)
            except SourceError as e:
                problem = str(e)
            except DigestMailerError as e:
                logger.error("run failed: %s%s", e, f" (hint: {e.hint})" if e.hint else "")
                return None
            except Exception as e:  # a defect: that run fails, the daemon goes on serving
                logger.exception("run failed unexpectedly: %s", type(e).__name__)
                return None
            else:
                if report.fetched or attempt == len(delays):
                    self.on_report(report)
                    return report
                problem = "the source has no papers"
            if attempt == len(delays):
                logger.error("source: %s; giving up until the next scheduled run", problem)
                return None
            logger.warning("source: %s; trying again in %.0fs (%d/%d)", problem,
                           delays[attempt], attempt + 2, len(delays) + 1)
            if self.stop.wait(delays[attempt]):
                return None
        return None

    def last_run(self, config: Config) -> datetime | None:
        from digest_mailer.store import Ledger

        with Ledger.open_readonly(config.state_target) as ledger:
            started = ledger.last_run_started()
        return datetime.fromisoformat(started) if started else None

    def serve(self, *, once_now: bool = False) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        config = self.first_load()
        tz = config.schedule_timezone
        trigger = parse_cron(config.schedule.cron, tz)
        grace = config.schedule.misfire_grace
        scheduler = BackgroundScheduler(timezone=ZoneInfo(tz))
        scheduler.add_job(self.job, trigger, id="digest", coalesce=True, max_instances=1,
                          misfire_grace_time=max(int(grace), 1))
        now = self.now()
        logger.info("serving %s: cron %r in %s, next run %s", self.config_path,
                    config.schedule.cron, tz, next_fire(trigger, now))
        missed = missed_fire(trigger, now, grace, self.last_run(config))
        if once_now:
            logger.info("running now (--once-now)")
            self.job()
        elif missed is not None:
            logger.info("the run due at %s was missed; running it now", missed)
            self.job()
        if not self.stop.is_set():
            scheduler.start()
            while not self.stop.wait(1.0):
                pass
            scheduler.shutdown(wait=True)
        logger.info("stopped")


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT: no new message; each connection finishes the one on the wire
    (within the SMTP timeout), the rest stays pending, then the process exits 0."""

    def handle(signum: int, _frame: Any) -> None:
        logger.warning("%s: finishing the message on the wire, then stopping",
                       signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
