"""Alembic environment: always handed a live connection by ``store.database.migrate``."""

from alembic import context

from tokendealer.store import (  # noqa: F401  (tables)
    admin_events,
    assertion_replays,
    key_table,
    registry,
    revocation_list,
    status_lists,
)
from tokendealer.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
