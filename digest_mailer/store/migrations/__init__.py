"""Alembic's migration scripts for the ledger (env.py, versions/). store/schema.py runs them."""
