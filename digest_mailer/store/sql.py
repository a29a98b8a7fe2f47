"""The few places where SQLite and PostgreSQL spell a thing differently, as SQLAlchemy
constructs: the statements read the same on both engines."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_for(dialect: str, table: Table) -> Any:
    """INSERT ... ON CONFLICT in the engine's own dialect (both engines have it)."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
