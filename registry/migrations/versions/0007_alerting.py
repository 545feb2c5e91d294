"""alerting: rules, evaluation state per (rule, label set), incidents and their notifications

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("condition", JSON, nullable=False),
        sa.Column("interval_seconds", sa.Integer(), nullable=False),
        sa.Column("cooldown_seconds", sa.Integer(), nullable=False),
        sa.Column("active", JSON, nullable=False),
        sa.Column("routes", JSON, nullable=False),
        sa.Column("escalation", JSON, nullable=True),
        sa.Column("resolve_after_minutes", sa.Double(), nullable=True),
        sa.Column("last_evaluated_at", TS, nullable=True),
        sa.Column("created_by", sa.String(length=320), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_alert_rules_name")),
    )
    op.create_table(
        "alert_states",
        sa.Column("rule_id", sa.String(length=36), nullable=False),
        sa.Column("group_key", sa.String(length=64), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("breaches", sa.Integer(), nullable=False),
        sa.Column("firing", sa.Boolean(), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("last_opened_at", TS, nullable=True),
        sa.Column("since", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["alert_rules.id"], name=op.f("fk_alert_states_rule_id_alert_rules"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("rule_id", "group_key", name=op.f("pk_alert_states")),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("rule_id", sa.String(length=36), nullable=True),
        sa.Column("rule_name", sa.String(length=200), nullable=False),
        sa.Column("module_name", sa.String(length=50), nullable=True),
        sa.Column("dedup_key", sa.String(length=200), nullable=True),
        sa.Column("group_key", sa.String(length=64), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("workflow_id", sa.String(length=255), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("fire_count", sa.Integer(), nullable=False),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("condition_since", TS, nullable=True),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("last_fired_at", TS, nullable=False),
        sa.Column("acknowledged_at", TS, nullable=True),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("timeline", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_index(op.f("ix_incidents_rule_id"), "incidents", ["rule_id"], unique=False)
    op.create_index("ix_incidents_status_opened", "incidents", ["status", "opened_at"], unique=False)
    op.create_table(
        "incident_notifications",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("incident_id", sa.String(length=36), nullable=False),
        sa.Column("transition", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outcome", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_incident_notifications_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_notifications")),
        sa.UniqueConstraint("key", name=op.f("uq_incident_notifications_key")),
    )
    op.create_index(
        op.f("ix_incident_notifications_incident_id"), "incident_notifications", ["incident_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("incident_notifications")
    op.drop_index("ix_incidents_status_opened", table_name="incidents")
    op.drop_index(op.f("ix_incidents_rule_id"), table_name="incidents")
    op.drop_table("incidents")
    op.drop_table("alert_states")
    op.drop_table("alert_rules")
