"""A database that looks like a managed one (RDS, Cloud SQL, Azure, Supabase, Neon): the application's
role has CREATEROLE and owns the database but is no superuser; pgvector was created beforehand by the
provider's superuser; plpython3u (an untrusted language) can never be created by the role.

The server is a real PostgreSQL with PL/Python on disk (the tests' cluster): what makes it "managed"
is the role, exactly as on those providers, where the binaries may exist but only a superuser could
create the language."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg
from psycopg import sql

from tests.support.postgres import PostgresServer


@dataclass(frozen=True)
class ManagedDatabase:
    dsn: str  # as the application's role (the one that installs qvl)
    role: str
    admin_dsn: str  # the provider's superuser, for what a test must look at from outside


def managed_database(server: PostgresServer, hint: str = "managed") -> ManagedDatabase:
    """A new database owned by a new CREATEROLE role (no superuser), pgvector created in it by the
    superuser; plpython3u not created."""
    suffix = uuid.uuid4().hex[:6]
    role, name = f"app_{suffix}", f"m_{hint[:30]}_{suffix}".lower()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE NOSUPERUSER").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
    admin_dsn = server.dsn(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    return ManagedDatabase(server.dsn(name, user=role), role, admin_dsn)
