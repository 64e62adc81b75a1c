"""Alembic migrations of the store's schema (``core.models``), configured from code.

``core.store.alembic_config(url)`` builds the Alembic configuration; ``Store.migrate()`` upgrades
a store to the head revision. To write a new migration after changing ``core.models``::

    python -c "from alembic import command; from addons.core.store import alembic_config; \\
        command.revision(alembic_config('sqlite:////tmp/schema.db'), autogenerate=True, message='...')"

against a store at the previous head, then review the generated file (SQLite needs batch mode for
most ALTERs, which ``env.py`` turns on).
"""
