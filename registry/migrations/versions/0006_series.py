"""time series: declared series, label sets, points (partitioned by month on PostgreSQL), hourly
rollups (partitioned by year), daily rollups and the hours waiting to be rolled up

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("module_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("fields", JSON, nullable=False),
        sa.Column("raw_retention_days", sa.Integer(), nullable=False),
        sa.Column("rollup_retention_days", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["module_id"], ["modules.id"], name=op.f("fk_series_module_id_modules"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("module_id", "name", name="uq_series_module_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "series_label_sets",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"], ["series.id"], name=op.f("fk_series_label_sets_series_id_series"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series_label_sets")),
        sa.UniqueConstraint("series_id", "digest", name="uq_series_label_sets_series_digest"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "series_points",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("label_set_id", BIGINT, nullable=False),
        sa.Column("field", sa.SmallInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "label_set_id", "field", "ts", name=op.f("pk_series_points")),
        postgresql_partition_by="RANGE (ts)",
    )
    op.create_table(
        "series_rollups",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("label_set_id", BIGINT, nullable=False),
        sa.Column("field", sa.SmallInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sum", sa.Double(), nullable=False),
        sa.Column("min", sa.Double(), nullable=False),
        sa.Column("max", sa.Double(), nullable=False),
        sa.Column("first", sa.Double(), nullable=False),
        sa.Column("last", sa.Double(), nullable=False),
        sa.Column("increase", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "label_set_id", "field", "hour", name=op.f("pk_series_rollups")),
        postgresql_partition_by="RANGE (hour)",
    )
    op.create_table(
        "series_rollups_daily",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("label_set_id", BIGINT, nullable=False),
        sa.Column("field", sa.SmallInteger(), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sum", sa.Double(), nullable=False),
        sa.Column("min", sa.Double(), nullable=False),
        sa.Column("max", sa.Double(), nullable=False),
        sa.Column("first", sa.Double(), nullable=False),
        sa.Column("last", sa.Double(), nullable=False),
        sa.Column("increase", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "label_set_id", "field", "day", name=op.f("pk_series_rollups_daily")),
    )
    op.create_table(
        "series_dirty_hours",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("label_set_id", BIGINT, nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "label_set_id", "hour", name=op.f("pk_series_dirty_hours")),
    )


def downgrade() -> None:
    # Dropping a partitioned table drops its partitions.
    op.drop_table("series_dirty_hours")
    op.drop_table("series_rollups_daily")
    op.drop_table("series_rollups")
    op.drop_table("series_points")
    op.drop_table("series_label_sets")
    op.drop_table("series")
