"""The module manifest contract: its JSON Schema, validation, semver ranges and cron helpers.

See docs/manifest.md for the reference of every field and issue code.
"""

from __future__ import annotations

from registry.manifest.cron import (
    CRON_ALIASES,
    CronSpec,
    min_interval_seconds,
    next_runs,
    parse_cron,
    to_temporal_cron,
    validate_cron,
    validate_timezone,
)
from registry.manifest.semver import (
    Comparator,
    Range,
    Version,
    is_valid_range,
    is_valid_version,
    parse_range,
    parse_version,
)
from registry.manifest.validate import (
    MANIFEST_SCHEMA,
    MASK,
    MAX_JSON_DEPTH,
    ManifestIssue,
    ValidationReport,
    apply_config_defaults,
    event_pattern_matches,
    event_pattern_problem,
    json_pointer,
    json_problem,
    manifest_json_schema,
    mask_secrets,
    secret_fields,
    secret_keys,
    secret_parts,
    unmask_secrets,
    validate_config,
    validate_manifest,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "json_problem",
    "CRON_ALIASES",
    "MANIFEST_SCHEMA",
    "MASK",
    "Comparator",
    "CronSpec",
    "ManifestIssue",
    "Range",
    "ValidationReport",
    "Version",
    "apply_config_defaults",
    "event_pattern_matches",
    "event_pattern_problem",
    "is_valid_range",
    "min_interval_seconds",
    "is_valid_version",
    "json_pointer",
    "manifest_json_schema",
    "mask_secrets",
    "next_runs",
    "parse_cron",
    "parse_range",
    "parse_version",
    "secret_fields",
    "secret_keys",
    "secret_parts",
    "unmask_secrets",
    "to_temporal_cron",
    "validate_config",
    "validate_cron",
    "validate_manifest",
    "validate_timezone",
]
