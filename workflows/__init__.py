"""Temporal workflows (deterministic), the worker assembly and schedule management."""
