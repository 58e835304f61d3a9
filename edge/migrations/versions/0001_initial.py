"""Initial schema: scans, reviews, outbox, principals, auth sessions.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-29

Written out in full rather than built from `edge.db` so that later model changes cannot alter what this
revision did; `tests/test_store.py` checks that the migrated schema and the models agree.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from edge.db import UTCDateTime

revision: str = "0001_initial"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create the tables."""
    op.create_table(
        "scans",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("station", sa.String(128), nullable=False),
        sa.Column("lane", sa.String(128), nullable=False),
        sa.Column("bag_id", sa.String(128), nullable=False),
        sa.Column("view", sa.String(64), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(128), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("result", _JSON, nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("alarm", sa.Boolean(), nullable=False),
        sa.Column("alarm_classes", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scans"),
        sa.UniqueConstraint("station", "bag_id", "image_sha256", name="uq_scans_station_bag_id_image_sha256"),
    )
    op.create_index("ix_scans_alarm_id", "scans", ["alarm", "id"])
    op.create_index("ix_scans_created_at", "scans", ["created_at"])

    op.create_table(
        "reviews",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("scan_id", _ID, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("id", name="pk_reviews"),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name="fk_reviews_scan_id_scans", ondelete="CASCADE"),
        sa.CheckConstraint("verdict IN ('confirmed', 'cleared')", name=op.f("ck_reviews_verdict")),
    )
    op.create_index("ix_reviews_scan_id_id", "reviews", ["scan_id", "id"])

    op.create_table(
        "outbox",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("dedupe_key", sa.String(256), nullable=False),
        sa.Column("status", sa.String(8), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("leased_by", sa.String(128), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("done_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("dedupe_key", name="uq_outbox_dedupe_key"),
        sa.CheckConstraint("status IN ('pending', 'done', 'dead')", name=op.f("ck_outbox_status")),
    )
    op.create_index("ix_outbox_status_next_attempt_at", "outbox", ["status", "next_attempt_at"])

    op.create_table(
        "principals",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_principals"),
        sa.UniqueConstraint("kind", "name", name="uq_principals_kind_name"),
        sa.UniqueConstraint("key_hash", name="uq_principals_key_hash"),
        sa.CheckConstraint(
            "(kind = 'station' AND role = 'station') OR (kind = 'user' AND role IN ('supervisor', 'admin'))",
            name=op.f("ck_principals_kind_role"),
        ),
    )

    op.create_table(
        "auth_sessions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("csrf_token", sa.String(128), nullable=False),
        sa.Column("principal_id", _ID, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_auth_sessions"),
        sa.UniqueConstraint("token_hash", name="uq_auth_sessions_token_hash"),
        sa.ForeignKeyConstraint(
            ["principal_id"], ["principals.id"], name="fk_auth_sessions_principal_id_principals", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_auth_sessions_expires_at", "auth_sessions", ["expires_at"])
    op.create_index("ix_auth_sessions_principal_id", "auth_sessions", ["principal_id"])


def downgrade() -> None:
    """Drop the tables (children first)."""
    op.drop_table("auth_sessions")
    op.drop_table("principals")
    op.drop_table("outbox")
    op.drop_table("reviews")
    op.drop_table("scans")
