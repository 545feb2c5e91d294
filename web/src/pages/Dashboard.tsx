import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { api, unwrap } from "../api/client";
import { Card, Duration, ErrorBox, Loading, PageHeader, Stat, StatusBadge, Time } from "../components/ui";

const LIVE = 5_000;

interface ExecStats {
  total: number;
  by_status: Record<string, number>;
  success_rate: number | null;
  p95_duration_ms: number | null;
  per_job: { job_id: string | null; module: string; job_type: string; total: number; by_status: Record<string, number> }[];
}

export default function Dashboard() {
  const since = new Date(Date.now() - 24 * 3600 * 1000);
  since.setSeconds(0, 0);
  const stats = useQuery({
    queryKey: ["executions", "stats", "24h"],
    queryFn: async () =>
      (await unwrap(api.GET("/api/v1/executions/stats", { params: { query: { since: since.toISOString() } } }))) as unknown as ExecStats,
    refetchInterval: LIVE,
  });
  const running = useQuery({
    queryKey: ["executions", "list", { status: "RUNNING", dash: true }],
    queryFn: () => unwrap(api.GET("/api/v1/executions", { params: { query: { status: "RUNNING", limit: 10 } } })),
    refetchInterval: LIVE,
  });
  const upcoming = useQuery({
    queryKey: ["jobs", "upcoming", 8],
    queryFn: () => unwrap(api.GET("/api/v1/upcoming-runs", { params: { query: { limit: 8 } } })),
    refetchInterval: 30_000,
  });
  const events = useQuery({
    queryKey: ["events", "stats"],
    queryFn: () => unwrap(api.GET("/api/v1/events/stats")),
    refetchInterval: LIVE,
  });
  const incidents = useQuery({
    queryKey: ["alerts", "counts"],
    queryFn: () => unwrap(api.GET("/api/v1/alerts/incidents/counts")),
    refetchInterval: LIVE,
  });
  const modules = useQuery({
    queryKey: ["modules", "list", { dash: true }],
    queryFn: () => unwrap(api.GET("/api/v1/modules", { params: { query: { limit: 200 } } })),
    refetchInterval: 30_000,
  });

  const s = stats.data;
  const failing = (s?.per_job ?? [])
    .filter((j) => (j.by_status.FAILED ?? 0) + (j.by_status.TIMED_OUT ?? 0) > 0)
    .sort((a, b) => (b.by_status.FAILED ?? 0) - (a.by_status.FAILED ?? 0))
    .slice(0, 8);
  const moduleCounts: Record<string, number> = {};
  for (const m of modules.data?.items ?? []) moduleCounts[m.status] = (moduleCounts[m.status] ?? 0) + 1;

  return (
    <>
      <PageHeader title="Dashboard">
        <span className="muted live-dot">Live</span>
      </PageHeader>
      <ErrorBox error={stats.error} />
      <div className="stats-row">
        <Stat label="Runs in the last 24 h" value={s?.total ?? "…"} />
        <Stat label="Success rate" value={s?.success_rate == null ? "—" : `${(s.success_rate * 100).toFixed(1)} %`} />
        <Stat label="p95 duration" value={<Duration ms={s?.p95_duration_ms} />} />
        <Stat label="Running now" value={running.data?.total ?? "…"} />
        <Stat label="Pending events" value={events.data?.pending ?? "…"} />
        <Stat
          label="Open incidents"
          value={incidents.data ? <Link to="/alerts?status=firing">{`${incidents.data.open} (${incidents.data.by_severity.critical ?? 0} critical)`}</Link> : "…"}
        />
      </div>
      <div className="grid">
        <Card title="Runs by status (24 h)">
          {s ? (
            <ul className="status-list">
              {Object.entries(s.by_status).map(([status, n]) => (
                <li key={status}>
                  <Link to={`/executions?status=${status}&since=${encodeURIComponent(since.toISOString())}`}>
                    <StatusBadge status={status} />
                  </Link>
                  <span>{n}</span>
                </li>
              ))}
            </ul>
          ) : (
            <Loading />
          )}
        </Card>
        <Card title="Running now">
          <ErrorBox error={running.error} />
          {running.data && running.data.items.length === 0 ? <p className="muted">Nothing is running.</p> : null}
          <ul className="plain">
            {running.data?.items.map((e) => (
              <li key={e.id}>
                <Link to={`/executions/${e.id}`}>
                  {e.module}.{e.job_type}
                </Link>{" "}
                <span className="muted">
                  since <Time value={e.started_at ?? e.created_at} />
                </span>
              </li>
            ))}
          </ul>
        </Card>
        <Card title="Failing jobs (24 h)">
          {s && failing.length === 0 ? <p className="muted">No failures.</p> : null}
          <ul className="plain">
            {failing.map((j) => (
              <li key={j.job_id ?? `${j.module}.${j.job_type}`}>
                {j.job_id ? <Link to={`/jobs/${j.job_id}`}>{`${j.module}.${j.job_type}`}</Link> : `${j.module}.${j.job_type}`}{" "}
                <span className="muted">
                  {j.by_status.FAILED ?? 0} failed, {j.by_status.TIMED_OUT ?? 0} timed out of {j.total}
                </span>
              </li>
            ))}
          </ul>
        </Card>
        <Card title="Next scheduled runs">
          <ErrorBox error={upcoming.error} />
          {upcoming.data && upcoming.data.length === 0 ? <p className="muted">No scheduled job.</p> : null}
          <ul className="plain">
            {upcoming.data?.map((run) => (
              <li key={run.job_id}>
                <Link to={`/jobs/${run.job_id}`}>{run.job_name}</Link>{" "}
                <span className="muted">
                  <Time value={run.at} />
                </span>
              </li>
            ))}
          </ul>
        </Card>
        <Card title="Modules by status">
          <ErrorBox error={modules.error} />
          <ul className="status-list">
            {Object.entries(moduleCounts).map(([status, n]) => (
              <li key={status}>
                <Link to={`/modules?status=${status}`}>
                  <StatusBadge status={status} />
                </Link>
                <span>{n}</span>
              </li>
            ))}
          </ul>
          {modules.data && modules.data.items.length === 0 ? <p className="muted">No module registered.</p> : null}
        </Card>
        <Card title="Events">
          {events.data ? (
            <p>
              {events.data.last_24h} in the last 24 h, {events.data.pending} pending dispatch.{" "}
              <Link to="/events">Open events</Link>
            </p>
          ) : (
            <Loading />
          )}
        </Card>
      </div>
    </>
  );
}
