import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { api, unwrap } from "../api/client";
import { Card, Duration, ErrorBox, Loading, PageHeader, Stat, StatusBadge, Time } from "../components/ui";

const LIVE = 5_000;
const HOUR = 3600 * 1000;

interface ExecStats {
  total: number;
  by_status: Record<string, number>;
  success_rate: number | null;
  p95_duration_ms: number | null;
}

interface PlatformHealth {
  status: string;
  version: string;
  uptime_seconds: number;
  dependencies: Record<string, { status: string; latency_ms: number; impact?: string }>;
}

/** Nearest-rank percentile of ``values`` (0..100). */
function percentile(values: number[], q: number): number | null {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length, Math.max(1, Math.round((q / 100) * sorted.length + 0.5))) - 1];
}

/** The figures an operator checks first, for those who run no Grafana (docs/observability.md). */
export default function Health() {
  const since = new Date(Date.now() - HOUR);
  since.setSeconds(0, 0);
  const stats = useQuery({
    queryKey: ["executions", "stats", "1h"],
    queryFn: async () =>
      (await unwrap(api.GET("/api/v1/executions/stats", { params: { query: { since: since.toISOString() } } }))) as unknown as ExecStats,
    refetchInterval: LIVE,
  });
  // Trigger -> start lag of the latest runs that started (created_at -> started_at).
  const recent = useQuery({
    queryKey: ["executions", "list", { health: true }],
    queryFn: () => unwrap(api.GET("/api/v1/executions", { params: { query: { sort: "-started_at", limit: 100 } } })),
    refetchInterval: LIVE,
  });
  const events = useQuery({
    queryKey: ["events", "stats"],
    queryFn: () => unwrap(api.GET("/api/v1/events/stats")),
    refetchInterval: LIVE,
  });
  const workers = useQuery({
    queryKey: ["workers"],
    queryFn: () => unwrap(api.GET("/api/v1/workers")),
    refetchInterval: 10_000,
  });
  const platform = useQuery({
    queryKey: ["health"],
    queryFn: async (): Promise<PlatformHealth> => {
      const r = await fetch("/health", { headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error(`GET /health answered ${r.status}`);
      return (await r.json()) as PlatformHealth;
    },
    refetchInterval: LIVE,
  });

  const s = stats.data;
  const finished = s ? (s.by_status.COMPLETED ?? 0) + (s.by_status.FAILED ?? 0) + (s.by_status.TIMED_OUT ?? 0) : 0;
  const failed = s ? (s.by_status.FAILED ?? 0) + (s.by_status.TIMED_OUT ?? 0) : 0;
  const lags = (recent.data?.items ?? [])
    .filter((e) => e.started_at)
    .map((e) => new Date(e.started_at as string).getTime() - new Date(e.created_at).getTime())
    .filter((ms) => ms >= 0);
  const lag = percentile(lags, 95);
  const waiting = (recent.data?.items ?? []).filter((e) => e.status === "PENDING").length;

  return (
    <>
      <PageHeader title="Health">
        <span className="muted live-dot">Live</span>
      </PageHeader>
      <ErrorBox error={stats.error ?? recent.error ?? events.error ?? workers.error} />
      <div className="stats-row">
        <Stat label="Runs per minute (last hour)" value={s ? (s.total / 60).toFixed(1) : "…"} />
        <Stat label="Failure rate (last hour)" value={s ? (finished ? `${((failed / finished) * 100).toFixed(1)} %` : "—") : "…"} />
        <Stat label="p95 trigger → start (latest 100 runs)" value={recent.data ? <Duration ms={lag} /> : "…"} />
        <Stat label="p95 duration (last hour)" value={<Duration ms={s?.p95_duration_ms} />} />
        <Stat label="Pending events" value={events.data?.pending ?? "…"} />
        <Stat label="Workers polling" value={workers.data ? new Set(workers.data.workers.map((w) => w.identity)).size : "…"} />
      </div>
      <div className="grid">
        <Card title="Dependencies">
          <ErrorBox error={platform.error} />
          {platform.data ? (
            <>
              <p>
                <StatusBadge status={platform.data.status.toUpperCase()} /> version {platform.data.version}, up{" "}
                <Duration ms={platform.data.uptime_seconds * 1000} />
              </p>
              <ul className="status-list">
                {Object.entries(platform.data.dependencies).map(([name, d]) => (
                  <li key={name}>
                    <span>{name}</span>
                    <span>
                      {d.status === "ok" ? "ok" : <strong>down</strong>} <span className="muted">{d.latency_ms} ms</span>
                      {d.impact ? <span className="muted"> — {d.impact}</span> : null}
                    </span>
                  </li>
                ))}
              </ul>
            </>
          ) : (
            <Loading />
          )}
        </Card>
        <Card title="Workers">
          {workers.data && workers.data.workers.length === 0 ? (
            <p>
              <strong>No worker polls the platform's task queues</strong> ({workers.data.task_queues.join(", ")}): runs wait. Start one with{" "}
              <code>autoplat worker</code>.
            </p>
          ) : null}
          {workers.data && workers.data.workers.length > 0 ? (
            <div className="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th scope="col">Worker</th>
                    <th scope="col">Task queue</th>
                    <th scope="col">Polls for</th>
                    <th scope="col">Last seen</th>
                  </tr>
                </thead>
                <tbody>
                  {workers.data.workers.map((w) => (
                    <tr key={`${w.identity}-${w.task_queue}`}>
                      <td>
                        <code>{w.identity}</code>
                      </td>
                      <td>{w.task_queue}</td>
                      <td>{w.task_types.join(", ")}</td>
                      <td>
                        <Time value={w.last_seen} />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : null}
          {!workers.data && !workers.error ? <Loading /> : null}
        </Card>
        <Card title="Waiting runs">
          {recent.data ? (
            waiting ? (
              <p>
                <Link to="/executions?status=PENDING">{waiting} runs</Link> among the latest 100 have not started; each run's page says why.
              </p>
            ) : (
              <p className="muted">None of the latest 100 runs is waiting to start.</p>
            )
          ) : (
            <Loading />
          )}
          <p className="muted">
            Prometheus metrics and a Grafana dashboard: see the operator docs (<code>docs/observability.md</code>).
          </p>
        </Card>
      </div>
    </>
  );
}
