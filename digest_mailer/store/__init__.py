"""The ledger (SQLite or PostgreSQL): papers, deliveries (with what each offered), runs, the
outbox, suppressions."""

from digest_mailer.store.engines import StoreTarget
from digest_mailer.store.ledger import DeliveryRecord, HistoryRow, Ledger, RunRecord
from digest_mailer.store.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "DeliveryRecord", "HistoryRow", "Ledger", "RunRecord",
           "StoreTarget"]
