from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from registry.manifest import json_problem

T = TypeVar("T")


class Schema(BaseModel):
    model_config = ConfigDict(from_attributes=True, extra="forbid")


def _plain_json(value: Any) -> Any:
    problem = json_problem(value)
    if problem is not None:
        pointer, reason = problem
        raise ValueError(f"{pointer or '/'}: {reason}")
    return value


def _printable(value: str | None) -> str | None:
    if value is not None and any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise ValueError("control characters (NUL, newlines, ...) are not allowed")
    if value is not None:
        _plain_json(value)
    return value


#: A JSON object stored as given (event payload, job or module config): at most 64 levels deep,
#: no NaN / Infinity, no lone surrogate, no NUL. Refused with 422 before anything is stored.
JsonObject = Annotated[dict[str, Any], AfterValidator(_plain_json)]
#: A name or label: no control characters.
Printable = Annotated[str, AfterValidator(_printable)]
#: Free text: newlines allowed, NUL and lone surrogates not.
Text = Annotated[str, AfterValidator(_plain_json)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    page: int
    limit: int
    total_exact: bool = Field(
        default=True, description="False when `total` is an estimate (executions: more than 10,000 rows match)"
    )
    has_more: bool = Field(default=False, description="Whether a next page has items (always exact)")

    @model_validator(mode="after")
    def _more(self) -> Page[T]:
        if "has_more" not in self.model_fields_set:
            self.has_more = self.page * self.limit < self.total
        return self


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Bad request",
        401: "Missing, invalid or expired access token",
        403: "The caller's role lacks the permission",
        404: "Not found",
        409: "Conflict with the current state",
        413: "Request body over the size limit (checked before parsing)",
        422: "Validation error",
        429: "Rate limited",
    }.items()
}
