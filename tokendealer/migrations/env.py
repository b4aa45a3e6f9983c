"""Alembic environment: always handed a live connection by ``tokendealer.db.migrate``."""

from alembic import context

from tokendealer.clients import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
