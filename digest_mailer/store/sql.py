"""The few places where SQLite and PostgreSQL spell a thing differently, as SQLAlchemy
constructs: the statements read the same on both engines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, func, literal_column, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import TypeEngine


def insert_for(dialect: str, table: Table) -> Any:
    """INSERT ... ON CONFLICT in the engine's own dialect (both engines have it)."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def one_of(column: ColumnElement[Any], item: TypeEngine[Any], name: str = "ids"
           ) -> dict[str, ColumnElement[bool]]:
    """`column` is one of the values bound as `name`, by dialect: one parameter however many
    values (a JSON array on SQLite, an array on PostgreSQL; give it with `values_of`), so a
    statement keeps one shape and stays on Db.hot's lean path. An expanding IN list takes
    SQLAlchemy's whole execution each time: a sender's claim spent 7% of its time there."""
    return {
        "sqlite": column.in_(select(literal_column("value")).select_from(
            func.json_each(bindparam(name)))),
        "postgresql": column == func.any(bindparam(name, type_=postgresql.ARRAY(item))),
    }


def values_of(dialect: str, values: Sequence[Any]) -> Any:
    """The values as `one_of`'s parameter takes them on this dialect."""
    return json.dumps(list(values)) if dialect == "sqlite" else list(values)
