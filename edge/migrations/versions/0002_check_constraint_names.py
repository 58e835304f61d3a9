"""Check constraints under the models' names on databases made by the first release of 0001_initial.

Revision ID: 0002_check_constraint_names
Revises: 0001_initial
Create Date: 2026-12-02

The first release of 0001_initial named its three CHECK constraints without `op.f`, so the naming
convention prefixed them a second time (`ck_reviews_ck_reviews_verdict`); 0001_initial was corrected in
place later, under the same revision id. A database made by that first release is renamed here; any other
is left as it is. Only names change: no row is touched.
- PostgreSQL: `ALTER TABLE … RENAME CONSTRAINT`.
- SQLite keeps a constraint's name only in the table's stored CREATE TABLE text, which this edits in place
  as SQLite documents for schema changes that leave the stored data as it is (sqlite.org/lang_altertable.html,
  "writable_schema"), bumping the schema version so every connection re-reads it.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002_check_constraint_names"
down_revision: Union[str, Sequence[str], None] = "0001_initial"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

#: table → (the first release's name, the models' name)
_RENAMES = {
    "reviews": ("ck_reviews_ck_reviews_verdict", "ck_reviews_verdict"),
    "outbox": ("ck_outbox_ck_outbox_status", "ck_outbox_status"),
    "principals": ("ck_principals_ck_principals_kind_role", "ck_principals_kind_role"),
}


def _rename(pairs: dict[str, tuple[str, str]]) -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    todo = {table: (old, new) for table, (old, new) in pairs.items()
            if old in {c["name"] for c in inspector.get_check_constraints(table)}}
    if not todo:
        return
    if bind.dialect.name == "postgresql":
        for table, (old, new) in todo.items():
            op.execute(f'ALTER TABLE {table} RENAME CONSTRAINT "{old}" TO "{new}"')
        return
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        for table, (old, new) in todo.items():
            sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                                       (table,)).scalar_one()
            if sql.count(old) != 1:
                raise RuntimeError(f"{table}: constraint {old} not found once in its definition")
            bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                                 (sql.replace(old, new), table))
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    """Rename the first release's doubled constraint names, where a database has them."""
    _rename(_RENAMES)


def downgrade() -> None:
    """Nothing to undo: 0001_initial as it stands makes the models' names."""
