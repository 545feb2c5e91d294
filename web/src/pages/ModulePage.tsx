// A module's page, drawn from its manifest's `ui` section (docs/manifest.md#ui): panels bound to the
// module's routes and series. No module code runs here: the manifest only names data and how to
// show it, and everything from the module is rendered as React text.
import Form from "@rjsf/core";
import type { ErrorSchema, RJSFSchema, UiSchema } from "@rjsf/utils";
import validator from "@rjsf/validator-ajv8";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { lazy, Suspense, useEffect, useId, useMemo, useRef, useState, type ReactNode } from "react";
import { Link, Navigate, NavLink, useParams, useSearchParams } from "react-router";
import { api, ApiError, authFetch, toApiError, unwrap } from "../api/client";
import { configErrors } from "../components/SchemaForm";
import { ConfirmButton, ErrorBox, Field, formatDuration, Json, Loading, PageHeader, StatusBadge, Time } from "../components/ui";
import type { Line } from "../components/Chart";

const LineChart = lazy(() => import("../components/Chart").then((m) => ({ default: m.LineChart })));

type Dict = Record<string, unknown>;
interface Shown {
  label?: string;
  value?: string;
  unit?: string;
  format?: string;
  decimals?: number;
  scale?: number;
}
interface Source {
  route?: string;
  path?: Record<string, string>;
  query?: Record<string, string>;
  series?: string;
  fields?: string[];
  labels?: Record<string, string>;
  step?: string;
  agg?: string[];
  latest?: boolean;
  from?: string;
  to?: string;
  last?: string;
  tz?: string;
}
interface Action {
  label: string;
  route: string;
  path?: Record<string, string>;
  confirm?: string;
  body?: unknown;
  form?: boolean;
  schema?: Dict;
  showIf?: string;
  hideIf?: string;
}
interface Panel extends Shown {
  type: string;
  title?: string;
  description?: string;
  width?: number;
  refreshSeconds?: number;
  source?: Source;
  items?: string;
  status?: string;
  x?: string;
  group?: string;
  fields?: Shown[];
  columns?: Shown[];
  actions?: Action[];
  emptyText?: string;
  text?: string;
  route?: string;
  path?: Record<string, string>;
  query?: Record<string, string>;
  schema?: Dict;
  submitLabel?: string;
  download?: boolean;
}
interface Input {
  name: string;
  label?: string;
  type: string;
  default?: string;
  required?: boolean;
  options?: { value: string; label?: string }[];
  source?: { route: string; items?: string; value?: string; label?: string };
}
interface RouteAccess {
  method: string;
  path: string;
  permission: string;
  allowed: boolean;
}
interface PageDef {
  module: string;
  display_name: string;
  name: string;
  title: string;
  description?: string | null;
  refresh_seconds?: number | null;
  inputs: Input[];
  panels: Panel[];
  routes: Record<string, RouteAccess>;
}

/** Values of the page's inputs, and what a template may name. */
interface Scope {
  inputs: Record<string, string>;
  types: Record<string, string>;
  row?: Dict;
}

// --- values --------------------------------------------------------------------------------------

/** The value at a dotted path (`summary.power_w`, `items.0.name`); the data itself for "". */
export function pick(data: unknown, path: string | undefined): unknown {
  if (!path) return data;
  let node: unknown = data;
  for (const key of path.split(".")) {
    if (node === null || node === undefined) return undefined;
    if (Array.isArray(node)) node = node[Number(key)];
    else if (typeof node === "object") node = (node as Dict)[key];
    else return undefined;
  }
  return node;
}

const WINDOW = /^([1-9][0-9]{0,3})([mhd])$/;
const UNIT_MS: Record<string, number> = { m: 60_000, h: 3_600_000, d: 86_400_000 };

function windowMs(text: string | undefined, fallback = "24h"): number {
  const m = WINDOW.exec(text ?? "") ?? WINDOW.exec(fallback)!;
  return Number(m[1]) * UNIT_MS[m[2]];
}

function monthValue(value: string): string {
  if (/^\d{4}-(0[1-9]|1[0-2])$/.test(value)) return value;
  const now = new Date();
  const back = value === "previous" ? 1 : 0;
  const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - back, 1));
  return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, "0")}`;
}

/** An input's value as templates see it (a month's "previous" is resolved; a range's ends apart). */
function resolved(scope: Scope, name: string, part?: string): string {
  const raw = scope.inputs[name] ?? "";
  const type = scope.types[name];
  if (type === "range") {
    // Rounded to the minute: a refresh inside one minute asks the same thing.
    const to = Math.floor(Date.now() / 60_000) * 60_000 + 60_000;
    if (part === "from") return new Date(to - windowMs(raw)).toISOString();
    if (part === "to") return new Date(to).toISOString();
    return raw;
  }
  if (type === "month") return monthValue(raw);
  return raw;
}

const PLACEHOLDER = /\{([a-z][a-z0-9_]*)(?:\.([A-Za-z0-9_]+))?\}/g;

/** A template with its {placeholders} filled; null when a required one has no value yet. */
export function fill(template: string, scope: Scope): string | null {
  let missing = false;
  const out = template.replace(PLACEHOLDER, (_m, name: string, part: string | undefined) => {
    const value = name === "row" && part ? scope.row?.[part] : resolved(scope, name, part);
    if (value === undefined || value === null || value === "") missing = true;
    return value === undefined || value === null ? "" : String(value);
  });
  return missing ? null : out;
}

function fillAll(map: Record<string, string> | undefined, scope: Scope): Record<string, string> | null {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(map ?? {})) {
    const filled = fill(v, scope);
    if (filled === null) return null;
    out[k] = filled;
  }
  return out;
}

/** A fixed body with its placeholders filled; a string that is one placeholder keeps the value's type. */
function fillBody(value: unknown, scope: Scope): unknown {
  if (typeof value === "string") {
    const whole = /^\{([a-z][a-z0-9_]*)(?:\.([A-Za-z0-9_]+))?\}$/.exec(value);
    if (whole && whole[1] === "row" && whole[2]) return scope.row?.[whole[2]] ?? null;
    return fill(value, scope) ?? "";
  }
  if (Array.isArray(value)) return value.map((v) => fillBody(v, scope));
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value as Dict).map(([k, v]) => [k, fillBody(v, scope)]));
  return value;
}

/** The API address of a module route with its path parameters and query; null until inputs are set. */
function routeUrl(page: PageDef, ref: string, path: Record<string, string> | undefined, query: Record<string, string> | undefined, scope: Scope): string | null {
  const access = page.routes[ref];
  if (!access) return null;
  const params = fillAll(path, scope);
  const q = fillAll(query, scope);
  if (params === null) return null;
  const filled = access.path.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, k: string) => encodeURIComponent(params[k] ?? ""));
  const search = new URLSearchParams();
  // A query value whose input is not set yet is left out: the route's default applies.
  for (const [k, v] of Object.entries(query ?? {})) {
    const one = q?.[k] ?? fill(v, scope);
    if (one) search.set(k, one);
  }
  const s = search.toString();
  return `/api/v1/m/${encodeURIComponent(page.module)}${filled}${s ? `?${s}` : ""}`;
}

function seriesUrl(page: PageDef, source: Source, scope: Scope): string | null {
  const q = new URLSearchParams({ module: page.module, series: source.series ?? "" });
  const step = source.step ? fill(source.step, scope) : "raw";
  if (step === null) return null;
  if (source.latest) q.set("latest", "true");
  else {
    q.set("step", step);
    if (step !== "raw") for (const a of source.agg ?? []) q.append("agg", a);
    const to = source.to ? fill(source.to, scope) : null;
    const from = source.from ? fill(source.from, scope) : null;
    if ((source.to && to === null) || (source.from && from === null)) return null;
    const end = to ?? new Date(Math.floor(Date.now() / 60_000) * 60_000 + 60_000).toISOString();
    q.set("to", end);
    q.set("from", from ?? new Date(Date.parse(end) - windowMs(source.last)).toISOString());
  }
  for (const f of source.fields ?? []) q.append("field", f);
  for (const [k, v] of Object.entries(source.labels ?? {})) {
    const value = fill(v, scope);
    if (value === null) return null;
    q.append("label", `${k}:${value}`);
  }
  if (source.tz) {
    const tz = fill(source.tz, scope);
    if (tz) q.set("tz", tz);
  }
  return `/api/v1/series/query?${q.toString()}`;
}

async function getJson(url: string): Promise<unknown> {
  const res = await authFetch(new Request(url));
  const body = await res.json().catch(() => undefined);
  if (!res.ok) throw toApiError(res, body);
  return body;
}

function formatValue(value: unknown, f: Shown): ReactNode {
  if (value === null || value === undefined || value === "") return <span className="muted">—</span>;
  switch (f.format) {
    case "status":
      return <StatusBadge status={String(value)} />;
    case "datetime":
      return <Time value={String(value)} />;
    case "duration_ms":
      return typeof value === "number" ? formatDuration(value) : String(value);
    case "json":
      return JSON.stringify(value);
    case "text":
      return typeof value === "object" ? JSON.stringify(value) : String(value);
  }
  if (typeof value !== "number") return typeof value === "object" ? JSON.stringify(value) : String(value);
  const scaled = value * (f.scale ?? 1);
  let text: string;
  if (f.format === "percent") text = `${(scaled * 100).toFixed(f.decimals ?? 1)} %`;
  else if (f.format === "integer") text = Math.round(scaled).toLocaleString();
  else if (f.decimals !== undefined) text = scaled.toLocaleString(undefined, { minimumFractionDigits: f.decimals, maximumFractionDigits: f.decimals });
  else text = scaled.toLocaleString(undefined, { maximumFractionDigits: 3 });
  return f.unit && f.format !== "percent" ? `${text} ${f.unit}` : text;
}

// --- the page ------------------------------------------------------------------------------------

export default function ModulePage() {
  const { module = "", page: pageName } = useParams();
  const nav = useQuery({ queryKey: ["ui", "pages"], queryFn: () => unwrap(api.GET("/api/v1/ui/pages")), staleTime: 30_000 });
  const pages = nav.data?.modules.find((m) => m.module === module)?.pages ?? [];
  if (!pageName) {
    if (nav.isPending) return <Loading />;
    if (pages.length) return <Navigate to={`/m/${encodeURIComponent(module)}/${pages[0].name}`} replace />;
    return (
      <section>
        <h1>Not found</h1>
        <p>The module {module} has no pages you may open (it may be disabled).</p>
      </section>
    );
  }
  return (
    <>
      {pages.length > 1 ? (
        <nav className="tabs" aria-label={`Pages of ${module}`}>
          {pages.map((p) => (
            <NavLink key={p.name} to={`/m/${encodeURIComponent(module)}/${p.name}`}>
              {p.title}
            </NavLink>
          ))}
        </nav>
      ) : null}
      <ModulePageBody key={`${module}/${pageName}`} module={module} name={pageName} />
    </>
  );
}

function ModulePageBody({ module, name }: { module: string; name: string }) {
  const def = useQuery({
    queryKey: ["ui", "page", module, name],
    queryFn: () => unwrap(api.GET("/api/v1/ui/modules/{name}/pages/{page}", { params: { path: { name: module, page: name } } })),
  });
  const [params, setParams] = useSearchParams();
  const page = def.data as PageDef | undefined;
  useEffect(() => {
    if (page) document.title = `${page.title} · ${page.display_name} · autoplat`;
  }, [page]);
  if (def.isPending) return <Loading />;
  if (def.error || !page) return <ErrorBox error={def.error ?? new Error("no page")} />;

  const types = Object.fromEntries(page.inputs.map((i) => [i.name, i.type]));
  const inputs = Object.fromEntries(page.inputs.map((i) => [i.name, params.get(i.name) ?? i.default ?? ""]));
  const scope: Scope = { inputs, types };
  const setInput = (name: string, value: string) =>
    setParams(
      (prev) => {
        const next = new URLSearchParams(prev);
        if (value) next.set(name, value);
        else next.delete(name);
        return next;
      },
      { replace: true },
    );

  return (
    <>
      <PageHeader title={page.title}>
        <span className="muted">{page.display_name}</span>
        {page.refresh_seconds ? <span className="muted live-dot">every {page.refresh_seconds} s</span> : null}
      </PageHeader>
      {page.description ? <p className="muted">{page.description}</p> : null}
      {page.inputs.length ? (
        <div className="filters" role="group" aria-label="Page inputs">
          {page.inputs.map((input) => (
            <InputField key={input.name} page={page} input={input} value={inputs[input.name]} scope={scope} onChange={(v) => setInput(input.name, v)} />
          ))}
        </div>
      ) : null}
      <div className="panels">
        {page.panels.map((panel, i) => (
          <PanelBox key={i} page={page} panel={panel} scope={scope} />
        ))}
      </div>
    </>
  );
}

function InputField({ page, input, value, scope, onChange }: { page: PageDef; input: Input; value: string; scope: Scope; onChange(v: string): void }) {
  const label = input.label ?? input.name;
  const url = input.source ? routeUrl(page, input.source.route, undefined, undefined, scope) : null;
  const options = useQuery({
    queryKey: ["ui", "data", page.module, url],
    queryFn: () => getJson(url!),
    enabled: url !== null,
  });
  const choices = input.source
    ? ((pick(options.data, input.source.items) as unknown[] | undefined) ?? []).map((item) => ({
        value: String(pick(item, input.source!.value ?? "id") ?? ""),
        label: String(pick(item, input.source!.label ?? "name") ?? ""),
      }))
    : (input.options ?? []).map((o) => ({ value: o.value, label: o.label ?? o.value }));
  // A required select takes its first choice until one is picked.
  useEffect(() => {
    if (input.type === "select" && input.required && !value && choices.length) onChange(choices[0].value);
  }, [input, value, choices, onChange]);
  switch (input.type) {
    case "select":
    case "range":
      return (
        <Field label={label}>
          <select value={value} onChange={(e) => onChange(e.target.value)}>
            {input.required && input.type === "select" ? null : <option value="">{input.type === "range" ? "24 h" : "—"}</option>}
            {(input.type === "range" && !choices.length ? ["1h", "6h", "24h", "7d", "30d"].map((v) => ({ value: v, label: v })) : choices).map((c) => (
              <option key={c.value} value={c.value}>
                {c.label}
              </option>
            ))}
          </select>
        </Field>
      );
    case "month":
      return (
        <Field label={label}>
          <input type="month" value={monthValue(value)} onChange={(e) => onChange(e.target.value)} />
        </Field>
      );
    case "date":
      return (
        <Field label={label}>
          <input type="date" value={value} onChange={(e) => onChange(e.target.value)} />
        </Field>
      );
    default:
      return (
        <Field label={label}>
          <input type="text" value={value} onChange={(e) => onChange(e.target.value)} spellCheck={false} />
        </Field>
      );
  }
}

function PanelBox({ page, panel, scope }: { page: PageDef; panel: Panel; scope: Scope }) {
  const width = panel.width ?? (panel.type === "stat" || panel.type === "link" ? 1 : 4);
  return (
    <section className={`card panel panel-${panel.type} span-${width}`} aria-label={panel.title ?? panel.label ?? panel.type} data-panel={panel.type}>
      {panel.title ? <h2>{panel.title}</h2> : null}
      {panel.description ? <p className="muted small">{panel.description}</p> : null}
      <PanelBody page={page} panel={panel} scope={scope} />
    </section>
  );
}

function PanelBody({ page, panel, scope }: { page: PageDef; panel: Panel; scope: Scope }) {
  switch (panel.type) {
    case "markdown":
      return <Markdown text={panel.text ?? ""} />;
    case "form":
      return <FormPanel page={page} panel={panel} />;
    case "link":
      return <LinkPanel page={page} panel={panel} scope={scope} />;
    default:
      return <DataPanel page={page} panel={panel} scope={scope} />;
  }
}

function useSource(page: PageDef, panel: Panel, scope: Scope) {
  const source = panel.source ?? {};
  const url = source.route ? routeUrl(page, source.route, source.path, source.query, scope) : seriesUrl(page, source, scope);
  const refresh = panel.refreshSeconds ?? page.refresh_seconds ?? undefined;
  // The same address on one page is one request, whichever panels show it.
  const key = source.route ? url : JSON.stringify([source, scope.inputs]);
  const query = useQuery({
    queryKey: ["ui", "data", page.module, key],
    queryFn: () => getJson(source.route ? url! : seriesUrl(page, source, scope)!),
    enabled: url !== null,
    refetchInterval: refresh ? refresh * 1000 : false,
  });
  return { ...query, waiting: url === null };
}

function DataPanel({ page, panel, scope }: { page: PageDef; panel: Panel; scope: Scope }) {
  const data = useSource(page, panel, scope);
  if (data.waiting) return <p className="muted">Choose {page.inputs.filter((i) => !scope.inputs[i.name]).map((i) => i.label ?? i.name).join(", ")} above.</p>;
  if (data.error) return <ErrorBox error={data.error} />;
  if (data.isPending) return <Loading />;
  const isSeries = !panel.source?.route;
  switch (panel.type) {
    case "stat":
      return <div className="stat-value" data-testid="stat-value">{formatValue(pick(data.data, panel.value), panel)}</div>;
    case "cards":
      return <Cards panel={panel} data={data.data} />;
    case "timeseries":
      return <TimeSeries panel={panel} data={data.data} series={isSeries} />;
    case "bar":
      return <Bars panel={panel} data={data.data} series={isSeries} />;
    case "table":
      return <Table page={page} panel={panel} data={data.data} scope={scope} />;
    default:
      return <Json value={data.data} />;
  }
}

function itemsOf(data: unknown, path: string | undefined): Dict[] {
  const items = pick(data, path);
  return Array.isArray(items) ? (items as Dict[]) : [];
}

function Cards({ panel, data }: { panel: Panel; data: unknown }) {
  const items = itemsOf(data, panel.items);
  if (!items.length) return <p className="muted">{panel.emptyText ?? "Nothing to show."}</p>;
  return (
    <ul className="ui-cards">
      {items.map((item, i) => {
        const title = String(pick(item, panel.label ?? "name") ?? `#${i + 1}`);
        return (
          <li key={i} className="ui-card" aria-label={title}>
            <div className="ui-card-head">
              <strong>{title}</strong>
              {panel.status ? <StatusBadge status={String(pick(item, panel.status) ?? "unknown")} /> : null}
            </div>
            <dl>
              {(panel.fields ?? []).map((f, k) => {
                const v = pick(item, f.value);
                if (f.format === "text" && (v === null || v === undefined || v === "")) return null;
                return (
                  <div key={k}>
                    <dt>{f.label ?? f.value}</dt>
                    <dd>{formatValue(v, f)}</dd>
                  </div>
                );
              })}
            </dl>
          </li>
        );
      })}
    </ul>
  );
}

interface SeriesAnswer {
  groups: { labels: Record<string, string>; points: { ts: string; values: Dict }[] }[];
}

function seriesLines(data: unknown, fields: string[] | undefined): Line[] {
  const lines: Line[] = [];
  for (const g of (data as SeriesAnswer | undefined)?.groups ?? []) {
    const name = Object.values(g.labels).join(" · ");
    const seen = fields?.length ? fields : [...new Set(g.points.flatMap((p) => Object.keys(p.values)))];
    for (const field of seen) {
      const points = g.points.map((p) => {
        const raw = p.values[field];
        const v = typeof raw === "number" ? raw : raw && typeof raw === "object" ? (Object.values(raw as Dict).find((x) => typeof x === "number") as number | undefined) : undefined;
        return { t: Date.parse(p.ts), v: v ?? null };
      });
      lines.push({ label: seen.length > 1 ? `${name} ${field}` : name || field, points });
    }
  }
  return lines;
}

function TimeSeries({ panel, data, series }: { panel: Panel; data: unknown; series: boolean }) {
  const lines = useMemo<Line[]>(() => {
    if (series) return seriesLines(data, panel.source?.fields);
    const items = itemsOf(data, panel.items);
    const groups = new Map<string, Dict[]>();
    for (const item of items) {
      const g = panel.group ? String(pick(item, panel.group) ?? "") : "";
      groups.set(g, [...(groups.get(g) ?? []), item]);
    }
    return [...groups].flatMap(([g, rows]) =>
      (panel.fields ?? [{ value: panel.value, label: panel.title }]).map((f) => ({
        label: [g, f.label ?? f.value].filter(Boolean).join(" "),
        points: rows.map((r) => {
          const v = pick(r, f.value);
          return { t: Date.parse(String(pick(r, panel.x ?? "ts"))), v: typeof v === "number" ? v * (f.scale ?? 1) : null };
        }),
      })),
    );
  }, [data, panel, series]);
  if (!lines.some((l) => l.points.length)) return <p className="muted">{panel.emptyText ?? "No data in this range."}</p>;
  return (
    <Suspense fallback={<Loading />}>
      <LineChart label={panel.title ?? "chart"} lines={lines} unit={panel.unit} />
    </Suspense>
  );
}

function Bars({ panel, data, series }: { panel: Panel; data: unknown; series: boolean }) {
  const bars = useMemo(() => {
    if (series) {
      const lines = seriesLines(data, panel.value ? [panel.value] : panel.source?.fields);
      return lines.flatMap((l) =>
        l.points.map((p) => ({ label: `${new Date(p.t).toLocaleDateString()}${lines.length > 1 ? ` ${l.label}` : ""}`, value: p.v })),
      );
    }
    return itemsOf(data, panel.items).map((item) => {
      const v = pick(item, panel.value);
      return { label: String(pick(item, panel.label ?? "name") ?? ""), value: typeof v === "number" ? v : null };
    });
  }, [data, panel, series]);
  if (!bars.length) return <p className="muted">{panel.emptyText ?? "Nothing to show."}</p>;
  const max = Math.max(...bars.map((b) => Math.abs(b.value ?? 0)), 1e-9);
  return (
    <ul className="ui-bars">
      {bars.map((b, i) => (
        <li key={i}>
          <span className="ui-bar-label">{b.label}</span>
          <span className="ui-bar-track" aria-hidden="true">
            <span className="ui-bar" style={{ width: `${(Math.abs(b.value ?? 0) / max) * 100}%` }} />
          </span>
          <span className="ui-bar-value">{formatValue(b.value, panel)}</span>
        </li>
      ))}
    </ul>
  );
}

function Table({ page, panel, data, scope }: { page: PageDef; panel: Panel; data: unknown; scope: Scope }) {
  const rows = itemsOf(data, panel.items);
  const actions = (panel.actions ?? []).filter((a) => page.routes[a.route]?.allowed);
  const [outcome, setOutcome] = useState<{ title: string; value?: unknown; error?: unknown } | null>(null);
  if (!rows.length) return <p className="muted">{panel.emptyText ?? "Nothing to show."}</p>;
  return (
    <>
      <div className="table-wrap">
        <table>
          <thead>
            <tr>
              {(panel.columns ?? []).map((c, i) => (
                <th key={i} scope="col">
                  {c.label ?? c.value}
                </th>
              ))}
              {actions.length ? <th scope="col">Actions</th> : null}
            </tr>
          </thead>
          <tbody>
            {rows.map((row, r) => (
              <tr key={r}>
                {(panel.columns ?? []).map((c, i) => (
                  <td key={i}>{formatValue(pick(row, c.value), c)}</td>
                ))}
                {actions.length ? (
                  <td className="actions">
                    {actions
                      .filter((a) => (!a.showIf || Boolean(pick(row, a.showIf))) && (!a.hideIf || !pick(row, a.hideIf)))
                      .map((a) => (
                        <RowAction key={a.label} page={page} action={a} scope={{ ...scope, row }} onDone={setOutcome} />
                      ))}
                  </td>
                ) : null}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {outcome ? (
        <div className="ui-outcome" role="status">
          <strong>{outcome.title}</strong>
          {outcome.error ? <ErrorBox error={outcome.error} /> : <Json value={outcome.value} label={outcome.title} />}
          <button type="button" onClick={() => setOutcome(null)}>
            Close
          </button>
        </div>
      ) : null}
    </>
  );
}

async function callRoute(page: PageDef, ref: string, url: string, body?: unknown): Promise<unknown> {
  const method = page.routes[ref].method;
  const res = await authFetch(
    new Request(url, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    }),
  );
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON: shown as text */
  }
  if (!res.ok) throw toApiError(res, parsed);
  return parsed;
}

function RowAction({ page, action, scope, onDone }: { page: PageDef; action: Action; scope: Scope; onDone(o: { title: string; value?: unknown; error?: unknown }): void }) {
  const qc = useQueryClient();
  const url = routeUrl(page, action.route, action.path, undefined, scope);
  const name = String(scope.row?.name ?? scope.row?.id ?? "");
  const run = useMutation({
    mutationFn: (body?: unknown) => callRoute(page, action.route, url!, body),
    onSuccess: (value) => onDone({ title: `${action.label}: ${name}`, value }),
    onError: (error) => onDone({ title: `${action.label}: ${name}`, error }),
    onSettled: () => qc.invalidateQueries({ queryKey: ["ui", "data", page.module] }),
  });
  const body = action.body === undefined ? undefined : fillBody(action.body, scope);
  const label = run.isPending ? `${action.label}…` : action.label;
  if (action.form) return <EditAction page={page} action={action} url={url} scope={scope} name={name} onDone={onDone} />;
  if (action.confirm)
    return <ConfirmButton label={label} question={action.confirm} danger={page.routes[action.route].method === "DELETE"} disabled={!url || run.isPending} onConfirm={() => run.mutate(body)} />;
  return (
    <button type="button" disabled={!url || run.isPending} onClick={() => run.mutate(body)} aria-label={`${action.label} ${name}`}>
      {label}
    </button>
  );
}

/** The row's values the form knows (its schema's top-level properties). */
function formValues(row: Dict | undefined, schema: Dict): Dict {
  const props = Object.keys((schema.properties ?? {}) as Dict);
  return Object.fromEntries(Object.entries(row ?? {}).filter(([k, v]) => props.includes(k) && v !== null));
}

function EditAction({ page, action, url, scope, name, onDone }: { page: PageDef; action: Action; url: string | null; scope: Scope; name: string; onDone(o: { title: string; value?: unknown; error?: unknown }): void }) {
  const qc = useQueryClient();
  const dialog = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  const schema = (action.schema ?? { type: "object" }) as Dict;
  const [value, setValue] = useState<Dict>({});
  const save = useMutation({
    mutationFn: (body: Dict) => callRoute(page, action.route, url!, pruned(body)),
    onSuccess: (result) => {
      dialog.current?.close();
      onDone({ title: `${action.label}: ${name}`, value: result });
      void qc.invalidateQueries({ queryKey: ["ui", "data", page.module] });
    },
  });
  const uiSchema = useMemo<UiSchema>(() => ({ ...secretUi(schema), "ui:submitButtonOptions": { submitText: "Save" } }), [schema]);
  const extra: ErrorSchema | undefined = save.error instanceof ApiError ? configErrors(save.error.details, "body") : undefined;
  return (
    <>
      <button
        type="button"
        disabled={!url}
        aria-label={`${action.label} ${name}`}
        onClick={() => {
          setValue(formValues(scope.row, schema));
          save.reset();
          dialog.current?.showModal();
        }}
      >
        {action.label}
      </button>
      <dialog ref={dialog} aria-labelledby={titleId} className="confirm edit-dialog">
        <h2 id={titleId}>{`${action.label}: ${name}`}</h2>
        <Form<Dict>
          schema={schema as RJSFSchema}
          uiSchema={uiSchema}
          formData={value}
          validator={validator}
          idPrefix={`edit-${slug(action.route)}`}
          showErrorList={false}
          noHtml5Validate
          extraErrors={extra}
          onChange={(e) => setValue((e.formData ?? {}) as Dict)}
          onSubmit={(e) => save.mutate((e.formData ?? {}) as Dict)}
        />
        <ErrorBox error={save.error} />
        <div className="actions">
          <button type="button" onClick={() => dialog.current?.close()}>
            Cancel
          </button>
        </div>
      </dialog>
    </>
  );
}

/** "PATCH /endpoints/{endpoint_id}" -> "PATCH-endpoints-endpoint_id": ids of a form's fields. */
function slug(route: string): string {
  return route.replace(/[^a-z0-9_]+/gi, "-").replace(/^-+|-+$/g, "");
}

/** Password widgets for every `writeOnly` or `format: password` property, at any depth. */
function secretUi(schema: Dict): UiSchema {
  const ui: UiSchema = {};
  const props = (schema.properties ?? {}) as Record<string, Dict>;
  for (const [key, sub] of Object.entries(props)) {
    if (sub.writeOnly === true || sub.format === "password") ui[key] = { "ui:widget": "password", "ui:autocomplete": "new-password" };
    else if (sub.type === "object") ui[key] = secretUi(sub);
  }
  return ui;
}

/** What a form sends: empty strings, empty objects and empty lists left out. */
function pruned(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(pruned);
  if (value && typeof value === "object") {
    const out: Dict = {};
    for (const [k, v] of Object.entries(value as Dict)) {
      const p = pruned(v);
      if (p === undefined || p === "" || (p && typeof p === "object" && !Array.isArray(p) && !Object.keys(p).length)) continue;
      out[k] = p;
    }
    return out;
  }
  return value;
}

function FormPanel({ page, panel }: { page: PageDef; panel: Panel }) {
  const qc = useQueryClient();
  const access = page.routes[panel.route ?? ""];
  const [value, setValue] = useState<Dict>({});
  const [outcome, setOutcome] = useState<unknown>(undefined);
  const submit = useMutation({
    mutationFn: (body: Dict) => callRoute(page, panel.route!, `/api/v1/m/${encodeURIComponent(page.module)}${access.path}`, pruned(body)),
    onSuccess: (result) => {
      setOutcome(result);
      setValue({});
      void qc.invalidateQueries({ queryKey: ["ui", "data", page.module] });
    },
  });
  const uiSchema = useMemo<UiSchema>(
    () => ({ ...secretUi(panel.schema ?? {}), "ui:submitButtonOptions": { submitText: panel.submitLabel ?? "Submit", props: { disabled: submit.isPending } } }),
    [panel, submit.isPending],
  );
  if (!access?.allowed) return <p className="muted">Your role may not use this form ({access?.permission ?? "operator"} or above).</p>;
  const extra: ErrorSchema | undefined = submit.error instanceof ApiError ? configErrors(submit.error.details, "body") : undefined;
  return (
    <>
      <Form<Dict>
        schema={(panel.schema ?? { type: "object" }) as RJSFSchema}
        uiSchema={uiSchema}
        formData={value}
        validator={validator}
        idPrefix={`form-${slug(panel.route ?? "")}`}
        showErrorList={false}
        noHtml5Validate
        extraErrors={extra}
        onChange={(e) => setValue((e.formData ?? {}) as Dict)}
        onSubmit={(e) => submit.mutate((e.formData ?? {}) as Dict)}
      />
      <ErrorBox error={submit.error} />
      {outcome !== undefined && !submit.error ? (
        <div className="ok" role="status">
          Done.
          <Json value={outcome} label="Answer" />
        </div>
      ) : null}
    </>
  );
}

function LinkPanel({ page, panel, scope }: { page: PageDef; panel: Panel; scope: Scope }) {
  const url = routeUrl(page, panel.route ?? "", panel.path, panel.query, scope);
  const [error, setError] = useState<unknown>(null);
  const [shown, setShown] = useState<unknown>(undefined);
  async function open() {
    setError(null);
    try {
      const res = await authFetch(new Request(url!));
      if (!res.ok) throw toApiError(res, await res.json().catch(() => undefined));
      if (!panel.download) {
        setShown(await res.json());
        return;
      }
      const disposition = res.headers.get("Content-Disposition") ?? "";
      const filename = /filename="?([^";]+)"?/.exec(disposition)?.[1] ?? "download";
      const href = URL.createObjectURL(await res.blob());
      const a = document.createElement("a");
      a.href = href;
      a.download = filename;
      a.click();
      setTimeout(() => URL.revokeObjectURL(href), 10_000);
    } catch (e) {
      setError(e);
    }
  }
  if (!page.routes[panel.route ?? ""]?.allowed) return null;
  return (
    <>
      <button type="button" className="primary" disabled={!url} onClick={() => void open()}>
        {panel.label}
      </button>
      <ErrorBox error={error} />
      {shown !== undefined ? <Json value={shown} label={panel.label} /> : null}
    </>
  );
}

// --- markdown, without HTML ----------------------------------------------------------------------

const INLINE = /(\*\*[^*]+\*\*|`[^`]+`|\[[^\]]+\]\([^)\s]+\))/g;

function inline(text: string): ReactNode[] {
  return text.split(INLINE).map((part, i) => {
    if (part.startsWith("**") && part.endsWith("**") && part.length > 4) return <strong key={i}>{part.slice(2, -2)}</strong>;
    if (part.startsWith("`") && part.endsWith("`") && part.length > 2) return <code key={i}>{part.slice(1, -1)}</code>;
    const link = /^\[([^\]]+)\]\(([^)\s]+)\)$/.exec(part);
    if (link) {
      const [, label, href] = link;
      if (href.startsWith("/") && !href.startsWith("//")) return <Link key={i} to={href}>{label}</Link>;
      if (/^https?:\/\//i.test(href))
        return (
          <a key={i} href={href} target="_blank" rel="noopener noreferrer">
            {label}
          </a>
        );
      return <span key={i}>{label}</span>;
    }
    return part;
  });
}

/** Headings, paragraphs, lists, **bold**, `code` and links (relative, http, https); text only. */
export function Markdown({ text }: { text: string }) {
  const blocks = text.split(/\n{2,}/);
  return (
    <div className="markdown">
      {blocks.map((block, i) => {
        const lines = block.split("\n");
        const heading = /^(#{1,3})\s+(.*)$/.exec(block);
        if (heading && lines.length === 1) {
          const level = heading[1].length;
          return level === 1 ? <h3 key={i}>{inline(heading[2])}</h3> : <h4 key={i}>{inline(heading[2])}</h4>;
        }
        if (lines.every((l) => /^\s*[-*]\s+/.test(l)))
          return (
            <ul key={i}>
              {lines.map((l, k) => (
                <li key={k}>{inline(l.replace(/^\s*[-*]\s+/, ""))}</li>
              ))}
            </ul>
          );
        return <p key={i}>{inline(lines.join(" "))}</p>;
      })}
    </div>
  );
}
