"""Postgres connector: the installer (``sql/``), the queue worker, SQLAlchemy helpers."""
