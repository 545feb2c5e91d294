import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { api, unwrap } from "../api/client";
import { useAuth } from "../auth";
import { ErrorBox, Loading, PageHeader, Pager, Time, useUrlFilters, Field } from "../components/ui";

const LIMIT = 25;

export default function Jobs() {
  const { can } = useAuth();
  const { values, settled, page, set, setPage } = useUrlFilters(["module", "enabled", "search"] as const);
  const modules = useQuery({
    queryKey: ["modules", "list", { all: true }],
    queryFn: () => unwrap(api.GET("/api/v1/modules", { params: { query: { limit: 200 } } })),
  });
  const list = useQuery({
    queryKey: ["jobs", "list", settled, page],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/jobs", {
          params: {
            query: {
              module: settled.module || undefined,
              enabled: settled.enabled ? settled.enabled === "true" : undefined,
              search: settled.search || undefined,
              page,
              limit: LIMIT,
            },
          },
        }),
      ),
    refetchInterval: 10_000,
  });
  const upcoming = useQuery({
    queryKey: ["jobs", "upcoming", settled.module],
    queryFn: () => unwrap(api.GET("/api/v1/upcoming-runs", { params: { query: { limit: 500, module: settled.module || undefined } } })),
    refetchInterval: 30_000,
  });
  const nextRun = new Map((upcoming.data ?? []).map((r) => [r.job_id, r.at]));
  return (
    <>
      <PageHeader title="Jobs">
        {can("jobs:write") ? (
          <Link className="button primary" to={values.module ? `/jobs/new?module=${encodeURIComponent(values.module)}` : "/jobs/new"}>
            Create job
          </Link>
        ) : null}
      </PageHeader>
      <div className="filters">
        <Field label="Module">
          <select value={values.module} onChange={(e) => set({ module: e.target.value })}>
            <option value="">All modules</option>
            {modules.data?.items.map((m) => (
              <option key={m.name} value={m.name}>
                {m.name}
              </option>
            ))}
          </select>
        </Field>
        <Field label="Enabled">
          <select value={values.enabled} onChange={(e) => set({ enabled: e.target.value })}>
            <option value="">Any</option>
            <option value="true">Enabled</option>
            <option value="false">Disabled</option>
          </select>
        </Field>
        <Field label="Search">
          <input type="search" value={values.search} onChange={(e) => set({ search: e.target.value })} placeholder="job name" />
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
                  <th scope="col">Job</th>
                  <th scope="col">Job type</th>
                  <th scope="col">Schedule</th>
                  <th scope="col">Enabled</th>
                  <th scope="col">Next run</th>
                </tr>
              </thead>
              <tbody>
                {list.data.items.map((j) => (
                  <tr key={j.id}>
                    <td>
                      <Link to={`/jobs/${j.id}`}>{j.name}</Link>
                    </td>
                    <td>
                      <code>
                        {j.module}.{j.job_type}
                      </code>
                    </td>
                    <td>{j.schedule ? <code>{j.schedule}</code> : <span className="muted">none</span>} <span className="muted small">{j.schedule ? j.timezone : ""}</span></td>
                    <td>{j.enabled ? "yes" : "no"}</td>
                    <td>
                      <Time value={nextRun.get(j.id)} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {list.data.items.length === 0 ? <p className="muted">No job matches.</p> : null}
          <Pager page={page} limit={LIMIT} total={list.data.total} onPage={setPage} />
        </>
      ) : null}
    </>
  );
}
