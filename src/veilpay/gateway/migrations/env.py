"""Alembic environment: runs on the connection the gateway hands over (store.migrate)."""

from alembic import context

from veilpay.gateway.store import metadata

conn = context.config.attributes.get("connection")
if conn is None:
    raise RuntimeError("run migrations through veilpay.gateway.store.migrate (or `veilpay gateway migrate`)")
context.configure(connection=conn, target_metadata=metadata, render_as_batch=conn.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
