"""Temporal activities: module handlers, the execution mirror, and the services jobs use."""
