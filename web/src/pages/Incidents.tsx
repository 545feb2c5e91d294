import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { api, unwrap } from "../api/client";
import { ErrorBox, Field, Loading, PageHeader, Pager, Stat, StatusBadge, Time, useUrlFilters } from "../components/ui";

const LIMIT = 25;
const STATUSES = ["firing", "acknowledged", "resolved", "dismissed"] as const;
const SEVERITIES = ["critical", "warning", "info"] as const;

/** Incidents of every rule and module, newest first, with their counts (docs/alerting.md). */
export default function Incidents() {
  const { values, settled, page, set, setPage } = useUrlFilters(["status", "severity", "label"] as const);
  const counts = useQuery({
    queryKey: ["alerts", "counts"],
    queryFn: () => unwrap(api.GET("/api/v1/alerts/incidents/counts")),
    refetchInterval: 5_000,
  });
  const list = useQuery({
    queryKey: ["alerts", "incidents", settled, page],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/alerts/incidents", {
          params: {
            query: {
              status: settled.status ? [settled.status as (typeof STATUSES)[number]] : undefined,
              severity: settled.severity ? [settled.severity as (typeof SEVERITIES)[number]] : undefined,
              label: settled.label ? [settled.label] : undefined,
              page,
              limit: LIMIT,
            },
          },
        }),
      ),
    refetchInterval: 5_000,
  });
  const c = counts.data;
  return (
    <>
      <PageHeader title="Incidents">
        <Link className="button" to="/alerts/rules">
          Alert rules
        </Link>
      </PageHeader>
      <div className="stats-row">
        <Stat label="Open" value={c?.open ?? "…"} />
        <Stat label="Firing" value={c?.by_status.firing ?? (c ? 0 : "…")} />
        <Stat label="Acknowledged" value={c?.by_status.acknowledged ?? (c ? 0 : "…")} />
        <Stat label="Open critical" value={c?.by_severity.critical ?? (c ? 0 : "…")} />
      </div>
      <div className="filters">
        <Field label="Status">
          <select value={values.status} onChange={(e) => set({ status: e.target.value })}>
            <option value="">Any</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </Field>
        <Field label="Severity">
          <select value={values.severity} onChange={(e) => set({ severity: e.target.value })}>
            <option value="">Any</option>
            {SEVERITIES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </Field>
        <Field label="Label">
          <input type="search" value={values.label} onChange={(e) => set({ label: e.target.value })} placeholder="name:value" />
        </Field>
      </div>
      <ErrorBox error={list.error} />
      {list.isPending ? <Loading /> : null}
      {list.data ? (
        <>
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Incident</th>
                  <th scope="col">Status</th>
                  <th scope="col">Severity</th>
                  <th scope="col">Rule</th>
                  <th scope="col">Alerts</th>
                  <th scope="col">Opened</th>
                </tr>
              </thead>
              <tbody>
                {list.data.items.map((i) => (
                  <tr key={i.id}>
                    <td>
                      <Link to={`/alerts/incidents/${i.id}`}>{i.title}</Link>
                      <div className="muted small">{i.message}</div>
                    </td>
                    <td>
                      <StatusBadge status={i.status} />
                    </td>
                    <td>
                      <StatusBadge status={i.severity} />
                    </td>
                    <td>{i.rule_id ? <Link to={`/alerts/rules/${i.rule_id}/edit`}>{i.rule_name}</Link> : i.rule_name}</td>
                    <td>{i.fire_count}</td>
                    <td>
                      <Time value={i.opened_at} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {list.data.items.length === 0 ? <p className="muted">No incident matches.</p> : null}
          <Pager page={page} limit={LIMIT} total={list.data.total} onPage={setPage} />
        </>
      ) : null}
    </>
  );
}
