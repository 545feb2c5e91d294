"""The manifest's ``ui`` section: pages the console renders for a module (DESIGN decision 14).

The JSON Schema (``$defs.ui*`` in schema.json) fixes the shapes; this module checks what a schema
cannot: that every route a page names is one of the module's routes with a fitting method, that
series, fields and labels exist, that every ``{placeholder}`` names a page input (or, in a row
action, ``row.<field>``), that a route's path parameters are all given, and that each panel type
has what it needs. It also answers the console: :func:`pages_for` lists what a role may see, and
:func:`page_for` gives one page with what the caller may do on each route it names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

#: ``{name}``, ``{name.from}`` (a range input's ends) or, in row actions, ``{row.field}``.
PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)(?:\.([A-Za-z0-9_]+))?\}")
ROUTE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
ROLE_RANK = {"viewer": 0, "operator": 1, "admin": 2}
#: What each panel type needs besides ``type``.
NEEDS: dict[str, tuple[str, ...]] = {
    "stat": ("source", "value"),
    "cards": ("source", "fields"),
    "timeseries": ("source",),
    "bar": ("source", "value"),
    "table": ("source", "columns"),
    "markdown": ("text",),
    "form": ("route",),
    "link": ("route", "label"),
}
RANGE_ENDS = ("from", "to")

Report = Callable[[str, str, str], None]


def route_permission(route: dict[str, Any]) -> str:
    """The least role a route asks for (its ``permission``, else viewer for GET, operator otherwise)."""
    if route.get("public") is True:
        return "viewer"
    declared = route.get("permission")
    if isinstance(declared, str) and declared in ROLE_RANK:
        return declared
    return "viewer" if route.get("method") == "GET" else "operator"


def role_allows(role: str, least: str | None) -> bool:
    return ROLE_RANK.get(role, -1) >= ROLE_RANK.get(least or "viewer", 0)


def _routes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for route in data.get("routes") or []:
        if isinstance(route, dict) and isinstance(route.get("method"), str) and isinstance(route.get("path"), str):
            out[f"{route['method']} {route['path']}"] = route
    return out


def _series(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in data.get("series") or [] if isinstance(s, dict) and isinstance(s.get("name"), str)}


def check_ui(data: dict[str, Any], error: Report) -> None:
    """Report every semantic problem of ``data["ui"]`` through ``error(path, code, message)``."""
    ui = data.get("ui")
    if not isinstance(ui, dict) or not isinstance(ui.get("pages"), list):
        return
    routes, series = _routes(data), _series(data)
    seen_pages: set[str] = set()
    for p, page in enumerate(ui["pages"]):
        if not isinstance(page, dict):
            continue
        base = f"/ui/pages/{p}"
        name = page.get("name")
        if isinstance(name, str):
            if name in seen_pages:
                error(f"{base}/name", "ui.duplicate_page", f"page {name!r} is declared more than once")
            seen_pages.add(name)
        inputs = _check_inputs(page.get("inputs"), base, routes, error)
        for k, panel in enumerate(page.get("panels") or []):
            if isinstance(panel, dict):
                _check_panel(panel, f"{base}/panels/{k}", inputs, routes, series, error)


def _check_inputs(raw: object, base: str, routes: dict[str, dict[str, Any]], error: Report) -> dict[str, str]:
    """The page's inputs by name -> type, with duplicates and option sources checked."""
    inputs: dict[str, str] = {}
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        path = f"{base}/inputs/{i}"
        if item["name"] in inputs or item["name"] == "row":
            error(f"{path}/name", "ui.duplicate_input", f"input name {item['name']!r} is taken")
        kind = str(item.get("type"))
        inputs[item["name"]] = kind
        if kind == "select" and not item.get("options") and not item.get("source"):
            error(path, "ui.select_without_options", "a select input needs options or a source")
        source = item.get("source")
        if isinstance(source, dict) and isinstance(source.get("route"), str):
            _check_route_ref(source["route"], f"{path}/source/route", routes, error, method="GET", given=set())
    return inputs


def _check_panel(
    panel: dict[str, Any],
    base: str,
    inputs: dict[str, str],
    routes: dict[str, dict[str, Any]],
    series: dict[str, dict[str, Any]],
    error: Report,
) -> None:
    kind = panel.get("type")
    for key in NEEDS.get(str(kind), ()):
        if key not in panel:
            error(base, "ui.panel_incomplete", f"a {kind} panel needs {key!r}")
    source = panel.get("source")
    if isinstance(source, dict):
        _check_source(source, f"{base}/source", inputs, routes, series, error)
        if kind == "form":
            error(f"{base}/source", "ui.form_source", "a form posts to its route; it has no source")
    route = panel.get("route")
    if isinstance(route, str):
        method = "GET" if kind == "link" else None
        given = set(panel.get("path") or {}) if isinstance(panel.get("path"), dict) else set()
        target = _check_route_ref(
            route, f"{base}/route", routes, error, method=method, given=given, form=kind == "form"
        )
        schemaless = target is not None and not isinstance(target.get("bodySchema"), dict)
        if kind == "form" and schemaless and "schema" not in panel:
            error(f"{base}/route", "ui.form_without_schema", f"{route} declares no bodySchema: give the panel a schema")
    for key in ("query", "path"):
        _check_templates(panel.get(key), f"{base}/{key}", inputs, error)
    for a, action in enumerate(panel.get("actions") or []):
        if not isinstance(action, dict) or not isinstance(action.get("route"), str):
            continue
        path = f"{base}/actions/{a}"
        raw_path = action.get("path")
        mapping: dict[str, Any] = raw_path if isinstance(raw_path, dict) else {}
        target = _check_route_ref(
            action["route"], f"{path}/route", routes, error, method=None, given=set(mapping), form=True
        )
        _check_templates(mapping, f"{path}/path", inputs, error, row=True)
        _check_body(action.get("body"), f"{path}/body", inputs, error)
        if action.get("form") is True and "body" in action:
            error(f"{path}/body", "ui.action_body_and_form", "an action sends either a fixed body or its form")
        schemaless = target is not None and not isinstance(target.get("bodySchema"), dict)
        if action.get("form") is True and schemaless and "schema" not in action:
            error(
                f"{path}/form",
                "ui.form_without_schema",
                f"{action['route']} declares no bodySchema: give the action a schema",
            )


def _check_source(
    source: dict[str, Any],
    base: str,
    inputs: dict[str, str],
    routes: dict[str, dict[str, Any]],
    series: dict[str, dict[str, Any]],
    error: Report,
) -> None:
    for key in ("path", "query", "labels"):
        _check_templates(source.get(key), f"{base}/{key}", inputs, error)
    for key in ("from", "to", "tz", "step"):
        if isinstance(source.get(key), str):
            _check_template(source[key], f"{base}/{key}", inputs, error)
    route = source.get("route")
    if isinstance(route, str):
        given = set(source["path"]) if isinstance(source.get("path"), dict) else set()
        _check_route_ref(route, f"{base}/route", routes, error, method="GET", given=given)
        for key in ("series", "fields", "labels", "step", "agg", "latest", "from", "to", "last", "tz"):
            if key in source:
                error(f"{base}/{key}", "ui.source_mixed", f"{key!r} belongs to a series source, not a route")
        return
    name = source.get("series")
    if not isinstance(name, str):
        return
    declared = series.get(name)
    if declared is None:
        error(f"{base}/series", "ui.unknown_series", f"no series named {name!r} in this module")
        return
    raw_fields = declared.get("fields")
    fields: dict[str, Any] = raw_fields if isinstance(raw_fields, dict) else {}
    for f, field in enumerate(source.get("fields") or []):
        if field not in fields:
            error(f"{base}/fields/{f}", "ui.unknown_field", f"series {name!r} has no field {field!r}")
    labels = set(declared.get("labels") or [])
    for label in source.get("labels") or {}:
        if label not in labels:
            error(f"{base}/labels/{label}", "ui.unknown_label", f"series {name!r} has no label {label!r}")
    for a, agg in enumerate(source.get("agg") or []):
        field, _, how = str(agg).rpartition(":")
        if field and field not in fields:
            error(f"{base}/agg/{a}", "ui.unknown_field", f"series {name!r} has no field {field!r}")
        if how not in ("avg", "min", "max", "sum", "count", "first", "last", "increase"):
            error(f"{base}/agg/{a}", "ui.unknown_agg", f"unknown aggregation {how!r}")
    for key in ("path", "query"):
        if key in source:
            error(f"{base}/{key}", "ui.source_mixed", f"{key!r} belongs to a route source, not a series")


def _check_route_ref(
    ref: str,
    path: str,
    routes: dict[str, dict[str, Any]],
    error: Report,
    *,
    method: str | None,
    given: set[str],
    form: bool = False,
) -> dict[str, Any] | None:
    route = routes.get(ref)
    if route is None:
        error(path, "ui.unknown_route", f'no route {ref!r} in this module (write it as "METHOD /path", as declared)')
        return None
    if method is not None and route.get("method") != method:
        error(path, "ui.route_method", f"{ref} must be a {method} route here")
    if form and route.get("method") == "GET":
        error(path, "ui.route_method", f"{ref} is a GET route; forms and actions call POST, PUT, PATCH or DELETE")
    missing = sorted(set(ROUTE_PARAM.findall(str(route.get("path")))) - given)
    if missing:
        error(path, "ui.route_param_missing", f"give {', '.join(missing)} of {ref} in the panel's path mapping")
    return route


def _check_body(raw: object, base: str, inputs: dict[str, str], error: Report) -> None:
    """Placeholders in a fixed body, at any depth."""
    if isinstance(raw, str):
        _check_template(raw, base, inputs, error, row=True)
    elif isinstance(raw, dict):
        for key, value in raw.items():
            _check_body(value, f"{base}/{key}", inputs, error)
    elif isinstance(raw, list):
        for k, value in enumerate(raw):
            _check_body(value, f"{base}/{k}", inputs, error)


def _check_templates(raw: object, base: str, inputs: dict[str, str], error: Report, *, row: bool = False) -> None:
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(value, str):
                _check_template(value, f"{base}/{key}", inputs, error, row=row)


def _check_template(text: str, path: str, inputs: dict[str, str], error: Report, *, row: bool = False) -> None:
    for name, part in PLACEHOLDER.findall(text):
        if name == "row" and row and part:
            continue
        if name not in inputs:
            error(path, "ui.unknown_input", f"{{{name}}} names no input of the page")
        elif part and not (inputs[name] == "range" and part in RANGE_ENDS):
            error(path, "ui.unknown_input", f"{{{name}.{part}}}: only a range input has .from and .to")


# --- what the console asks -----------------------------------------------------------------------


def visible_pages(manifest: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The module's pages a role may open, without their panels (navigation)."""
    pages = (manifest.get("ui") or {}).get("pages") or []
    return [
        {"name": p["name"], "title": p["title"], "description": p.get("description")}
        for p in pages
        if isinstance(p, dict) and role_allows(role, p.get("permission"))
    ]


def page_for(manifest: dict[str, Any], name: str, role: str) -> dict[str, Any] | None:
    """One page as the role sees it: panels it may not see left out, and what it may call on each
    route the page names (``routes``: ``"METHOD /path" -> {"allowed", "path", "permission"}``)."""
    pages = (manifest.get("ui") or {}).get("pages") or []
    page = next((p for p in pages if isinstance(p, dict) and p.get("name") == name), None)
    if page is None or not role_allows(role, page.get("permission")):
        return None
    routes = _routes(manifest)
    panels = [p for p in page.get("panels") or [] if role_allows(role, p.get("permission"))]
    panels = [_with_form_schema(p, routes) for p in panels]
    named = set(_named_routes(page.get("inputs") or [], panels))
    return page | {
        "panels": panels,
        "routes": {
            ref: {
                "path": routes[ref]["path"],
                "method": routes[ref]["method"],
                "permission": route_permission(routes[ref]),
                "allowed": role_allows(role, route_permission(routes[ref])),
            }
            for ref in sorted(named)
            if ref in routes
        },
    }


def _with_form_schema(panel: dict[str, Any], routes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A form (or a row action's edit form) without a schema of its own gets its route's bodySchema."""

    def schema_of(route: object) -> Any:
        return routes.get(str(route), {}).get("bodySchema")

    if isinstance(panel.get("actions"), list):
        panel = panel | {
            "actions": [
                a | {"schema": schema_of(a.get("route"))}
                if isinstance(a, dict)
                and a.get("form") is True
                and "schema" not in a
                and isinstance(schema_of(a.get("route")), dict)
                else a
                for a in panel["actions"]
            ]
        }
    if panel.get("type") != "form" or "schema" in panel:
        return panel
    body = schema_of(panel.get("route"))
    return panel | {"schema": body} if isinstance(body, dict) else panel


def _named_routes(inputs: Iterable[Any], panels: Iterable[Any]) -> Iterable[str]:
    for item in inputs:
        source = item.get("source") if isinstance(item, dict) else None
        if isinstance(source, dict) and isinstance(source.get("route"), str):
            yield source["route"]
    for panel in panels:
        if not isinstance(panel, dict):
            continue
        if isinstance(panel.get("route"), str):
            yield panel["route"]
        source = panel.get("source")
        if isinstance(source, dict) and isinstance(source.get("route"), str):
            yield source["route"]
        for action in panel.get("actions") or []:
            if isinstance(action, dict) and isinstance(action.get("route"), str):
                yield action["route"]
