"""Typed service layer: keyword-only functions, session first. Callers own the commit."""
