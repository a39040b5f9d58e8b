"""Alembic environment: migrations run on the connection `alignlab.feedback.db.migrate` passes in
(there is no alembic.ini; the app and the CLI migrate on start)."""

from alembic import context

from alignlab.feedback.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
