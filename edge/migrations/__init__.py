"""Schema migrations of the lane service, run from code (no alembic.ini).

`upgrade_to_head(engine)` is what `Store.migrate()` calls. The Alembic script directory is this package, so
migrations run the same from a checkout and from an installed wheel. For a new revision during development:

    python -c "from edge.migrations import revision; revision('sqlite:///dev.db', 'add column x')"

(autogenerate compares `edge.db.Base.metadata` with the database at that URL).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # alembic and sqlalchemy are imported when a migration runs, not at package import
    from alembic.config import Config
    from sqlalchemy import Connection, Engine

#: The Alembic script directory: this package.
MIGRATIONS_DIR = Path(__file__).resolve().parent
#: Key of the PostgreSQL advisory lock that serialises concurrent `upgrade_to_head` calls
#: (any constant 64-bit number; this one spells "xscreen" in ASCII).
PG_MIGRATION_LOCK_KEY = 0x78_73_63_72_65_65_6E


def alembic_config(connection: Connection | None = None, **attributes: Any) -> Config:
    """An Alembic `Config` built in code whose script location is this package. `connection`, if given,
    is the connection `env.py` migrates (it then neither opens nor commits one of its own)."""
    from alembic.config import Config

    config = Config()
    # ConfigParser interpolates "%": a path containing one must be escaped.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    config.attributes.update(attributes)
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Bring the database at `engine` to the newest revision; a no-op when it is already there.

    Safe when several processes call it at once: on PostgreSQL the whole upgrade runs in one transaction
    (PostgreSQL has transactional DDL) that first takes a transaction-scoped advisory lock, so the second
    process waits, then reads the version table the first one committed and finds nothing to do. On SQLite
    the transaction starts with BEGIN IMMEDIATE, which takes the database's write lock up front and so
    serialises the same way (SQLite DDL is transactional too); no lock file is needed and none can go stale.
    """
    from alembic import command
    from sqlalchemy import text

    from edge.db import SQLITE_WRITE_OPTION

    with engine.connect() as connection:
        connection = connection.execution_options(**{SQLITE_WRITE_OPTION: True})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY})
            # Alembic sees a connection already in a transaction and runs inside it; we commit below.
            command.upgrade(alembic_config(connection), "head")


def current_revision(engine: Engine) -> str | None:
    """The revision the database at `engine` is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision in this package."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "edge/migrations has no revisions"
    return head


def revision(db_url: str, message: str) -> None:
    """Development helper: autogenerate a new revision from the difference between the models and the
    (migrated) database at `db_url`. Review the generated file before committing it."""
    from alembic import command

    from edge.db import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            command.revision(alembic_config(connection), message=message, autogenerate=True)
    finally:
        engine.dispose()
