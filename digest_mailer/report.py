"""RunReport -> what people and scripts read: text lines for the terminal and the log, JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from digest_mailer.models import RunReport, RunState, Status, SubscriberOutcome

_MARK = {Status.SENT: "sent", Status.WRITTEN: "written", Status.NOTHING_NEW: "nothing new",
         Status.NO_MATCH: "no match", Status.PAUSED: "paused", Status.NOT_DUE: "not due",
         Status.FAILED: "FAILED", Status.NOT_ATTEMPTED: "not sent", Status.DEFERRED: "deferred",
         Status.SUPPRESSED: "suppressed", Status.PENDING: "pending",
         Status.CANCELLED: "cancelled"}
_STOPPED = {RunState.STOPPED: "Stopped", RunState.BLOCKED: "Sending stopped",
            RunState.CRASHED: "Sending stopped"}


SHOWN_REASONS = 5


def _outcome_line(o: SubscriberOutcome, width: int) -> str:
    where = f" -> {o.location}" if o.location and o.status is Status.WRITTEN else ""
    return f"  {o.email:<{width}}  {_MARK[o.status]:<11}  {o.detail}{where}"


def report_lines(report: RunReport) -> list[str]:
    mode = " (dry run: nothing sent, ledger untouched)" if report.dry_run else ""
    lines = [f"Run for {report.run_date}{mode}",
             f"Papers fetched: {report.fetched} from {report.origin}"
             + (f" ({report.skipped} item(s) skipped)" if report.skipped else "")]
    # The first few reasons; the sources keep at most a hundred, the count stays exact.
    lines += [f"  skipped: {why}" for why in report.skipped_reasons[:SHOWN_REASONS]]
    if report.skipped > SHOWN_REASONS:
        lines.append(f"  ... and {report.skipped - SHOWN_REASONS} more skipped")
    if report.stopped:
        # The cause once; each subscriber's line below says what is now pending.
        lines.append(f"{_STOPPED.get(report.state, 'Stopped')}: {report.stopped}")
    width = max((len(o.email) for o in report.outcomes), default=0)
    lines += [_outcome_line(o, width) for o in report.outcomes]
    verb = "written" if report.dry_run else "sent"
    idle = report.count(Status.NOTHING_NEW, Status.NO_MATCH, Status.PAUSED, Status.NOT_DUE,
                        Status.SUPPRESSED, Status.CANCELLED)
    waiting = report.count(Status.PENDING, Status.DEFERRED)
    failed = report.count(Status.FAILED, Status.NOT_ATTEMPTED)
    lines.append(f"{report.delivered} email(s) {verb}, {idle} with nothing to send, "
                 f"{failed} failed" + (f", {waiting} waiting for the next run" if waiting
                                       else ""))
    written = [o.location for o in report.outcomes if o.status is Status.WRITTEN and o.location]
    if written:
        lines.append(f"Preview: {Path(written[0]).parent / 'index.html'}")
    return lines


def report_dict(report: RunReport) -> dict[str, Any]:
    return {
        "run_id": report.run_id,
        "run_date": report.run_date.isoformat(),
        "started_at": report.started_at.isoformat(),
        "finished_at": report.finished_at.isoformat(),
        "dry_run": report.dry_run,
        "source": report.origin,
        "fetched": report.fetched,
        "skipped": report.skipped,
        "skipped_reasons": list(report.skipped_reasons),
        "delivered": report.delivered,
        "failed": report.failed,
        "stopped": report.stopped,
        "state": report.state.value,
        "subscribers": [
            {"email": o.email, "status": o.status.value, "papers": o.papers, "detail": o.detail,
             "message_id": o.message_id, "location": o.location}
            for o in report.outcomes],
    }
