"""Helpers that start real servers (PostgreSQL, Weaviate) for integration tests."""
