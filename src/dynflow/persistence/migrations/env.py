"""Alembic environment: migrations run on the connection the store hands over."""

from __future__ import annotations

from alembic import context

from dynflow.persistence.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the store always passes its connection
    raise RuntimeError("dynflow migrations run through dynflow.persistence, not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="dynflow_schema_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
