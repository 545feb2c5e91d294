import { useQuery } from "@tanstack/react-query";
import { api, unwrap } from "../api/client";
import { ExecutionTable } from "../components/ExecutionTable";
import { ErrorBox, EXECUTION_STATUSES, Loading, PageHeader, Pager, useUrlFilters, Field } from "../components/ui";

const LIMIT = 50;
const TRIGGERS = ["schedule", "manual", "event", "api", "http"];

function toLocalInput(iso: string): string {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
}

function fromLocalInput(value: string): string {
  return value ? new Date(value).toISOString() : "";
}

export default function Executions() {
  const { values, settled, page, set, setPage } = useUrlFilters(["status", "job_id", "module", "trigger", "since", "until"] as const);
  const list = useQuery({
    queryKey: ["executions", "list", settled, page],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/executions", {
          params: {
            query: {
              status: (settled.status || undefined) as never,
              job_id: settled.job_id || undefined,
              module: settled.module || undefined,
              trigger: (settled.trigger || undefined) as never,
              since: settled.since || undefined,
              until: settled.until || undefined,
              page,
              limit: LIMIT,
            },
          },
        }),
      ),
    refetchInterval: 3_000,
    placeholderData: (prev) => prev,
  });
  return (
    <>
      <PageHeader title="Executions">
        <span className="muted live-dot">Live</span>
      </PageHeader>
      <div className="filters">
        <Field label="Status">
          <select value={values.status} onChange={(e) => set({ status: e.target.value })}>
            <option value="">Any</option>
            {EXECUTION_STATUSES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </Field>
        <Field label="Trigger">
          <select value={values.trigger} onChange={(e) => set({ trigger: e.target.value })}>
            <option value="">Any</option>
            {TRIGGERS.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </Field>
        <Field label="Module">
          <input value={values.module} onChange={(e) => set({ module: e.target.value })} placeholder="module name" />
        </Field>
        <Field label="Job id">
          <input value={values.job_id} onChange={(e) => set({ job_id: e.target.value })} placeholder="job id" />
        </Field>
        <Field label="Since">
          <input type="datetime-local" value={toLocalInput(values.since)} onChange={(e) => set({ since: fromLocalInput(e.target.value) })} />
        </Field>
        <Field label="Until">
          <input type="datetime-local" value={toLocalInput(values.until)} onChange={(e) => set({ until: fromLocalInput(e.target.value) })} />
        </Field>
      </div>
      <ErrorBox error={list.error} />
      {list.isPending ? <Loading /> : null}
      {list.data ? (
        <>
          <ExecutionTable items={list.data.items} />
          {list.data.items.length === 0 ? <p className="muted">No run matches.</p> : null}
          <Pager page={page} limit={LIMIT} total={list.data.total} onPage={setPage} />
        </>
      ) : null}
    </>
  );
}
