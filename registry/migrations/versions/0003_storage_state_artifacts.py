"""module storage documents, per-job state and execution artifacts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 13:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql


revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "module_documents",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("module_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("value", JSON, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["module_id"], ["modules.id"], name=op.f("fk_module_documents_module_id_modules"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_module_documents")),
        sa.UniqueConstraint("module_id", "key", name="uq_module_documents_module_key"),
    )
    op.create_index("ix_module_documents_expires", "module_documents", ["expires_at"], unique=False)
    op.create_table(
        "job_states",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("value", JSON, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(length=36), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_states_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_states")),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("execution_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", BIGINT, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("storage", sa.String(length=16), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("step", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name=op.f("fk_artifacts_execution_id_executions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint("execution_id", "name", name="uq_artifacts_execution_name"),
    )
    op.create_index(op.f("ix_artifacts_execution_id"), "artifacts", ["execution_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_artifacts_execution_id"), table_name="artifacts")
    op.drop_table("artifacts")
    op.drop_table("job_states")
    op.drop_index("ix_module_documents_expires", table_name="module_documents")
    op.drop_table("module_documents")
