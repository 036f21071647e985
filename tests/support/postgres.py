"""A throwaway PostgreSQL server for integration tests (the shipped starter, reused)."""

from __future__ import annotations

from qvl_devtools.launchers.postgres import (
    DEFAULT_PG_BINDIR,
    SETUP_HINT,
    THROWAWAY_SETTINGS,
    LocalPostgres,
    pg_bindir,
)

PostgresServer = LocalPostgres
TEST_SETTINGS = THROWAWAY_SETTINGS

__all__ = ["DEFAULT_PG_BINDIR", "SETUP_HINT", "TEST_SETTINGS", "PostgresServer", "pg_bindir"]
