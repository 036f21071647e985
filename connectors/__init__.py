"""Connectors: the Python client of the qvl service and the Postgres and Weaviate integrations."""
