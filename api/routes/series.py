"""Time series of modules: what each declares, and queries by time (``series:read``, every role).

``GET /series?module=`` lists a module's series with their label values; ``GET /series/query``
answers raw points, the newest point per label set (``latest=true``) or buckets (``step``), as
JSON or as a streamed CSV export (``format=csv``). See docs/series.md.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.deps import Requires, SessionDep, SettingsDep
from api.schemas.common import ERROR_RESPONSES
from autoplat.series import STEPS
from registry.services import series as store
from registry.services.common import Actor

router = APIRouter(prefix="/series", tags=["series"], responses=ERROR_RESPONSES)

NAME = r"^[a-z][a-z0-9_]{0,62}$"
Step = Literal["raw", "1m", "5m", "1h", "1d", "1w", "1mo"]
assert get_args(Step) == STEPS


class SeriesRead(BaseModel):
    name: str
    description: str
    fields: dict[str, str] = Field(description="Field name -> gauge or counter")
    labels: list[str]
    retention: dict[str, int] = Field(description="rawDays and rollupDays")
    label_sets: int = Field(description="Label sets written so far")
    label_values: dict[str, list[str]] = Field(description="Values written so far, per label (at most 1000 each)")


class SeriesList(BaseModel):
    module: str
    items: list[SeriesRead]


class PointRead(BaseModel):
    ts: datetime
    values: dict[str, Any] = Field(
        description="Raw and latest: field -> value; with a step: field -> {aggregation -> value}"
    )


class GroupRead(BaseModel):
    labels: dict[str, str]
    points: list[PointRead]


class SeriesQueryRead(BaseModel):
    module: str
    series: str
    step: str
    tz: str
    from_: datetime = Field(alias="from", description="Start of the first bucket (or of the range)")
    to: datetime = Field(description="End of the last bucket (or of the range)")
    source: Literal["raw", "rollup", "latest"] = Field(description="What answered: points, hourly rollups, latest")
    fields: dict[str, str]
    aggregations: dict[str, list[str]] = Field(description="Per field, with a step")
    groups: list[GroupRead]

    model_config = {"populate_by_name": True}


@router.get("", response_model=SeriesList)
async def list_series(
    session: SessionDep,
    module: Annotated[str, Query(min_length=1, max_length=50, description="Module name")],
    _: Actor = Requires("series:read"),
) -> SeriesList:
    """The module's declared series, with the label values written so far."""
    infos = await store.describe(session=session, module=module)
    return SeriesList(
        module=module,
        items=[
            SeriesRead(
                name=i.defn.name,
                description=i.defn.description,
                fields=dict(i.defn.fields),
                labels=list(i.defn.labels),
                retention={"rawDays": i.defn.raw_retention_days, "rollupDays": i.defn.rollup_retention_days},
                label_sets=i.label_sets,
                label_values=i.label_values,
            )
            for i in infos
        ],
    )


@router.get("/query", response_model=SeriesQueryRead, response_model_by_alias=True)
async def query_series(
    session: SessionDep,
    settings: SettingsDep,
    module: Annotated[str, Query(min_length=1, max_length=50, description="Module name")],
    series: Annotated[str, Query(min_length=1, max_length=63, pattern=NAME, description="Series name")],
    start: Annotated[
        str | None, Query(alias="from", max_length=64, description="ISO 8601 with offset (default: to - 24 h)")
    ] = None,
    end: Annotated[
        str | None, Query(alias="to", max_length=64, description="ISO 8601 with offset (default: now)")
    ] = None,
    step: Annotated[Step, Query(description="raw, or buckets: 1m, 5m, 1h, 1d, 1w (from Monday), 1mo")] = "raw",
    tz: Annotated[str, Query(max_length=64, description="IANA timezone of day, week and month buckets")] = "UTC",
    label: Annotated[
        list[str] | None, Query(max_length=10, description="Label filter name:value (repeatable, all must match)")
    ] = None,
    field: Annotated[list[str] | None, Query(max_length=50, description="Fields to answer (default: all)")] = None,
    agg: Annotated[
        list[str] | None,
        Query(
            max_length=50,
            description="Aggregations (avg, min, max, sum, count, first, last, increase) for every field, "
            "or field:aggregation; default avg for gauges, increase for counters",
        ),
    ] = None,
    latest: Annotated[bool, Query(description="The newest point of each label set")] = False,
    format: Annotated[Literal["json", "csv"], Query(description="csv: a streamed export")] = "json",
    _: Actor = Requires("series:read"),
) -> Any:
    """Points, the latest point per label set, or buckets of a module's series (see docs/series.md)."""
    result = await store.run_query(
        session=session,
        module=module,
        series=series,
        start=start,
        end=end,
        step=step,
        tz=tz,
        labels=label or [],
        fields=field,
        agg=agg,
        latest=latest,
        max_points=settings.series_max_points,
    )
    if format == "csv":
        return StreamingResponse(
            _csv(result),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{module}-{series}.csv"'},
        )
    return _json(result)


def _groups(result: store.QueryResult) -> list[GroupRead]:
    groups: list[GroupRead] = []
    key: Any = object()
    items: list[Any] = list(result.buckets or result.points)
    for item in items:
        if item.labels != key:
            key = item.labels
            groups.append(GroupRead(labels=item.labels, points=[]))
        groups[-1].points.append(PointRead(ts=item.ts, values=item.values))
    return groups


def _json(result: store.QueryResult) -> SeriesQueryRead:
    q = result.query
    edges = q.edges
    return SeriesQueryRead.model_validate(
        {
            "module": result.module,
            "series": result.defn.name,
            "step": q.step,
            "tz": q.zone.key,
            "from": edges[0] if edges else q.start,
            "to": edges[-1] if edges else q.end,
            "source": result.source,
            "fields": {f: result.defn.fields[f] for f in q.fields},
            "aggregations": q.aggs,
            "groups": _groups(result),
        }
    )


def _csv(result: store.QueryResult) -> Iterator[str]:
    """One row per point or bucket: ts, the labels, then the values (``field`` or ``field_agg``)."""
    q = result.query
    labels = list(result.defn.labels)
    if result.buckets:
        columns = [(f, a) for f in q.fields for a in q.aggs.get(f, [])]
        header = [f"{f}_{a}" for f, a in columns]
    else:
        header = list(q.fields)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(["ts", *labels, *header])
    yield flush()
    items: list[Any] = list(result.buckets or result.points)
    for n, item in enumerate(items, start=1):
        values: dict[str, Any] = item.values
        if result.buckets:
            cells = [_cell((values.get(f) or {}).get(a)) for f, a in columns]
        else:
            cells = [_cell(values.get(f)) for f in header]
        writer.writerow([item.ts.isoformat(), *(item.labels.get(name, "") for name in labels), *cells])
        if n % 1000 == 0:
            yield flush()
    yield flush()


def _cell(value: Any) -> str:
    return "" if value is None else repr(float(value))
