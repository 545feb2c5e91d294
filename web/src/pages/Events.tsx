import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { lazy, Suspense, useEffect, useMemo, useRef, useState, type FormEvent } from "react";
import { Link } from "react-router";
import { api, errorMessage, unwrap, type Schemas } from "../api/client";
import { readSse } from "../api/sse";
import { useAuth } from "../auth";
import { Card, ErrorBox, Json, Loading, PageHeader, Pager, Stat, StatusBadge, Time, useUrlFilters, Field } from "../components/ui";

const BarChart = lazy(() => import("../components/Chart").then((m) => ({ default: m.BarChart })));
const LIMIT = 25;
type EventRead = Schemas["EventRead"];

export default function Events() {
  const { can } = useAuth();
  const { values, settled, page, set, setPage } = useUrlFilters(["pattern", "source", "module", "since", "live"] as const);
  const stats = useQuery({ queryKey: ["events", "stats"], queryFn: () => unwrap(api.GET("/api/v1/events/stats")), refetchInterval: 10_000 });
  const list = useQuery({
    queryKey: ["events", "list", settled.pattern, settled.source, settled.module, settled.since, page],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/events", {
          params: {
            query: {
              pattern: settled.pattern || undefined,
              source: settled.source || undefined,
              module: settled.module || undefined,
              since: settled.since || undefined,
              page,
              limit: LIMIT,
            },
          },
        }),
      ),
  });
  const subscriptions = useQuery({ queryKey: ["events", "subscriptions"], queryFn: () => unwrap(api.GET("/api/v1/events/subscriptions")) });
  const points = useMemo(
    () => (stats.data?.per_hour ?? []).map((h) => ({ t: new Date(h.hour).getTime(), v: h.count })),
    [stats.data],
  );
  const live = values.live === "1";

  return (
    <>
      <PageHeader title="Events">
        <label className="check">
          <input type="checkbox" checked={live} onChange={(e) => set({ live: e.target.checked ? "1" : "" })} /> Live
        </label>
      </PageHeader>
      <ErrorBox error={stats.error} />
      <div className="stats-row">
        <Stat label="Total" value={stats.data?.total ?? "…"} />
        <Stat label="Last 24 h" value={stats.data?.last_24h ?? "…"} />
        <Stat label="Last 7 days" value={stats.data?.last_7d ?? "…"} />
        <Stat label="Pending dispatch" value={stats.data?.pending ?? "…"} />
      </div>
      <div className="grid three">
        <Card title="Events per hour">
          <Suspense fallback={<Loading what="Loading chart" />}>{points.length ? <BarChart label="Events per hour" points={points} /> : <p className="muted">No events yet.</p>}</Suspense>
        </Card>
        <Card title="Top names">
          <TopList items={stats.data?.top_names} onPick={(value) => set({ pattern: value })} />
        </Card>
        <Card title="Top sources">
          <TopList items={stats.data?.top_sources} onPick={(value) => set({ source: value })} />
        </Card>
      </div>
      {can("events:write") ? <PostEvent /> : null}
      <div className="filters">
        <Field label="Name pattern">
          <input value={values.pattern} onChange={(e) => set({ pattern: e.target.value })} placeholder="data.* or health.alert" />
        </Field>
        <Field label="Source">
          <input value={values.source} onChange={(e) => set({ source: e.target.value })} />
        </Field>
        <Field label="Module">
          <input value={values.module} onChange={(e) => set({ module: e.target.value })} />
        </Field>
        <Field label="Since">
          <select value={values.since ? "custom" : ""} onChange={(e) => set({ since: sinceFor(e.target.value) })}>
            <option value="">Any time</option>
            <option value="1h">Last hour</option>
            <option value="24h">Last 24 h</option>
            <option value="7d">Last 7 days</option>
            {values.since ? <option value="custom">{new Date(values.since).toLocaleString()}</option> : null}
          </select>
        </Field>
      </div>
      {live ? <LiveEvents pattern={settled.pattern} /> : null}
      <Card title="Stored events">
        <ErrorBox error={list.error} />
        {list.isPending ? <Loading /> : null}
        {list.data ? (
          <>
            <EventTable items={list.data.items} />
            {list.data.items.length === 0 ? <p className="muted">No event matches.</p> : null}
            <Pager page={page} limit={LIMIT} total={list.data.total} onPage={setPage} />
          </>
        ) : null}
      </Card>
      <Card title="Subscriptions">
        <ErrorBox error={subscriptions.error} />
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Pattern</th>
                <th scope="col">Kind</th>
                <th scope="col">Starts</th>
                <th scope="col">Jobs</th>
              </tr>
            </thead>
            <tbody>
              {subscriptions.data?.map((s, i) => (
                <tr key={i}>
                  <td>
                    <code>{s.pattern}</code>
                    {s.description ? <div className="muted small">{s.description}</div> : null}
                  </td>
                  <td>{s.kind}</td>
                  <td>
                    <code>
                      {s.module}.{s.job_type}
                    </code>
                  </td>
                  <td>
                    {s.jobs.map((j) => (
                      <Link key={j.id} to={`/jobs/${j.id}`} className="tag">
                        {j.name}
                      </Link>
                    ))}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
        {subscriptions.data?.length === 0 ? <p className="muted">No subscription.</p> : null}
      </Card>
    </>
  );
}

function sinceFor(choice: string): string {
  const hours: Record<string, number> = { "1h": 1, "24h": 24, "7d": 168 };
  if (!(choice in hours)) return "";
  const d = new Date(Date.now() - hours[choice] * 3600_000);
  d.setSeconds(0, 0);
  return d.toISOString();
}

function EventTable({ items, testId }: { items: EventRead[]; testId?: string }) {
  return (
    <div className="table-wrap" data-testid={testId}>
      <table>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Source</th>
            <th scope="col">Occurred</th>
            <th scope="col">Dispatch</th>
            <th scope="col">Payload</th>
          </tr>
        </thead>
        <tbody>
          {items.map((e) => (
            <tr key={e.id}>
              <td>
                <code>{e.name}</code>
                {e.module ? <div className="muted small">from {e.module}</div> : null}
              </td>
              <td>{e.source ?? "—"}</td>
              <td>
                <Time value={e.occurred_at} />
              </td>
              <td>
                <StatusBadge status={e.dispatch_status} />
              </td>
              <td>
                <details>
                  <summary>{summary(e.payload)}</summary>
                  <Json value={e.payload} label={`Payload of ${e.name}`} />
                </details>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function summary(payload: Record<string, unknown>): string {
  const text = JSON.stringify(payload);
  return text.length > 60 ? `${text.slice(0, 60)}…` : text;
}

function LiveEvents({ pattern }: { pattern: string }) {
  const qc = useQueryClient();
  const [events, setEvents] = useState<EventRead[]>([]);
  const [state, setState] = useState<"connecting" | "open" | "error">("connecting");
  const [error, setError] = useState<string | null>(null);
  const retry = useRef<ReturnType<typeof setTimeout>>(undefined);
  useEffect(() => {
    const ctrl = new AbortController();
    setEvents([]);
    setState("connecting");
    const query = pattern ? `?pattern=${encodeURIComponent(pattern)}` : "";
    let lastSeq: string | undefined;
    // The stream sends what arrives from now on; after a drop it resumes from the last event seen
    // (Last-Event-ID replays what was missed), so the live list has no gap.
    const connect = (): void => {
      readSse(
        `/api/v1/events/stream${query}`,
        (m) => {
          try {
            const e = JSON.parse(m.data) as EventRead;
            lastSeq = m.id ?? lastSeq;
            setState("open");
            setEvents((prev) => [e, ...prev.filter((p) => p.id !== e.id)].slice(0, 100));
            void qc.invalidateQueries({ queryKey: ["events", "stats"] });
          } catch {
            /* not an event */
          }
        },
        ctrl.signal,
        lastSeq,
      )
        .then(() => {
          if (!ctrl.signal.aborted) retry.current = setTimeout(connect, 2_000);
        })
        .catch((e) => {
          if (ctrl.signal.aborted) return;
          setState("error");
          setError(errorMessage(e));
          retry.current = setTimeout(connect, 5_000);
        });
    };
    connect();
    setState("open");
    return () => {
      ctrl.abort();
      clearTimeout(retry.current);
    };
  }, [pattern, qc]);
  return (
    <Card title="Live events">
      <p className="muted" role="status">
        {state === "error" ? `Live stream interrupted (${error}); reconnecting…` : "Listening for new events…"} {events.length ? `${events.length} received.` : ""}
      </p>
      {events.length ? <EventTable items={events} testId="live-events" /> : null}
    </Card>
  );
}

function PostEvent() {
  const qc = useQueryClient();
  const [name, setName] = useState("test.ping");
  const [source, setSource] = useState("console");
  const [payload, setPayload] = useState("{}");
  const post = useMutation({
    mutationFn: async () => {
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(payload || "{}");
      } catch (e) {
        throw new Error(`the payload is not JSON: ${(e as Error).message}`);
      }
      return unwrap(api.POST("/api/v1/events", { body: { name, source: source || null, payload: parsed } }));
    },
    onSuccess: () => void qc.invalidateQueries({ queryKey: ["events"] }),
  });
  function submit(e: FormEvent) {
    e.preventDefault();
    post.mutate();
  }
  return (
    <details className="card">
      <summary>Post a test event</summary>
      <form onSubmit={submit} className="stack">
        <div className="row">
          <Field label="Event name">
            <input name="event-name" value={name} onChange={(e) => setName(e.target.value)} required />
          </Field>
          <Field label="Source">
            <input name="event-source" value={source} onChange={(e) => setSource(e.target.value)} />
          </Field>
        </div>
        <label htmlFor="event-payload">Payload (JSON object)</label>
        <textarea id="event-payload" rows={4} value={payload} onChange={(e) => setPayload(e.target.value)} spellCheck={false} />
        <ErrorBox error={post.error} />
        {post.data ? (
          <p role="status" className="ok">
            Posted event <code>{post.data.id}</code>.
          </p>
        ) : null}
        <button type="submit" className="primary" disabled={post.isPending}>
          Post event
        </button>
      </form>
    </details>
  );
}

/** The most frequent names or sources; picking one filters the list by it. */
function TopList({ items, onPick }: { items: { value: string; count: number }[] | undefined; onPick: (value: string) => void }) {
  return (
    <ul className="plain">
      {items?.map((n) => (
        <li key={n.value}>
          <button type="button" className="link" onClick={() => onPick(n.value)}>
            {n.value}
          </button>{" "}
          <span className="muted">{n.count}</span>
        </li>
      ))}
    </ul>
  );
}
