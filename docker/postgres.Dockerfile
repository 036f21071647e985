# PostgreSQL 17 with pgvector (>= 0.7: halfvec, bit, HNSW) and PL/Python (plpython3u).
# The official image already carries the PGDG apt repository, which packages both.
FROM postgres:17-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-17-pgvector postgresql-plpython3-17 \
    && rm -rf /var/lib/apt/lists/*

# PL/Python runs this image's system python3 with the standard library only (sql/ needs no more).
