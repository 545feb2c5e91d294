"""Pydantic request/response schemas, separate from the ORM models (``XCreate / XUpdate / XRead / XPage``)."""
