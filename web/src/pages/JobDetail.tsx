import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, unwrap } from "../api/client";
import { useAuth } from "../auth";
import { ExecutionTable } from "../components/ExecutionTable";
import { SlotTimeline } from "../components/SlotTimeline";
import { Card, ConfirmButton, ErrorBox, Json, Loading, PageHeader, Pager, StatusBadge, Time, useUrlFilters } from "../components/ui";

const LIMIT = 20;

export default function JobDetail() {
  const { id = "" } = useParams();
  const { can } = useAuth();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const { page, setPage } = useUrlFilters([] as const);
  const job = useQuery({
    queryKey: ["jobs", "detail", id],
    queryFn: () => unwrap(api.GET("/api/v1/jobs/{job_id}", { params: { path: { job_id: id } } })),
    refetchInterval: 10_000,
  });
  const runs = useQuery({
    queryKey: ["executions", "job", id, page],
    queryFn: () => unwrap(api.GET("/api/v1/jobs/{job_id}/executions", { params: { path: { job_id: id }, query: { page, limit: LIMIT } } })),
    refetchInterval: 3_000,
  });
  // The state document (ctx.state) is module data: operators and admins only, like storage.
  const jobState = useQuery({
    queryKey: ["jobs", "state", id],
    queryFn: () => unwrap(api.GET("/api/v1/jobs/{job_id}/state", { params: { path: { job_id: id } } })),
    enabled: can("jobs:write"),
    refetchInterval: 10_000,
  });
  const [override, setOverride] = useState("");
  const path = { params: { path: { job_id: id } } };
  const run = useMutation({
    mutationFn: async () => {
      let config: Record<string, unknown> | undefined;
      if (override.trim()) {
        try {
          config = JSON.parse(override);
        } catch (e) {
          throw new Error(`the config override is not JSON: ${(e as Error).message}`);
        }
      }
      return unwrap(api.POST("/api/v1/jobs/{job_id}/execute", { ...path, body: config ? { config } : {} }));
    },
    onSuccess: (execution) => {
      void qc.invalidateQueries({ queryKey: ["executions"] });
      navigate(`/executions/${execution.id}`);
    },
  });
  const toggle = useMutation({
    mutationFn: (enable: boolean) =>
      unwrap(enable ? api.POST("/api/v1/jobs/{job_id}/enable", path) : api.POST("/api/v1/jobs/{job_id}/disable", path)),
    onSuccess: () => void qc.invalidateQueries({ queryKey: ["jobs"] }),
  });
  const remove = useMutation({
    mutationFn: () => unwrap(api.DELETE("/api/v1/jobs/{job_id}", path)),
    onSuccess: () => {
      void qc.invalidateQueries({ queryKey: ["jobs"] });
      navigate("/jobs");
    },
  });

  if (job.isPending) return <Loading />;
  if (job.error) return <ErrorBox error={job.error} />;
  const j = job.data;
  return (
    <>
      <PageHeader title={j.name}>
        {can("executions:execute") ? (
          <button type="button" className="primary" disabled={run.isPending} onClick={() => run.mutate()}>
            Run now
          </button>
        ) : null}
        {can("jobs:write") ? (
          <>
            <Link className="button" to={`/jobs/${j.id}/edit`}>
              Edit
            </Link>
            <button type="button" disabled={toggle.isPending} onClick={() => toggle.mutate(!j.enabled)}>
              {j.enabled ? "Disable" : "Enable"}
            </button>
            <ConfirmButton label="Delete" danger question={`Delete job ${j.name}? Its run history stays.`} onConfirm={() => remove.mutate()} />
          </>
        ) : null}
      </PageHeader>
      <ErrorBox error={run.error ?? toggle.error ?? remove.error} />
      {j.description ? <p className="description">{j.description}</p> : null}
      <div className="grid two">
        <Card title="Job">
          <dl className="facts">
            <dt>Job type</dt>
            <dd>
              <Link to={`/modules/${encodeURIComponent(j.module)}`}>{j.module}</Link>.{j.job_type}
            </dd>
            <dt>Enabled</dt>
            <dd>{j.enabled ? "yes" : "no"}</dd>
            <dt>Schedule</dt>
            <dd>{j.schedule ? `${j.schedule} (${j.timezone})` : "none"}</dd>
            <dt>Timeout</dt>
            <dd>{j.timeout_seconds} s</dd>
            <dt>Attempts</dt>
            <dd>{j.max_attempts}</dd>
            <dt>Overlap</dt>
            <dd>{j.overlap}</dd>
            <dt>Last run</dt>
            <dd>{j.last_execution ? <StatusBadge status={j.last_execution.status} /> : "never"}</dd>
          </dl>
        </Card>
        <Card title="Next runs">
          {j.next_runs.length ? (
            <ol className="next-runs">
              {j.next_runs.map((r) => (
                <li key={r}>
                  <Time value={r} />
                </li>
              ))}
            </ol>
          ) : (
            <p className="muted">Not scheduled.</p>
          )}
        </Card>
      </div>
      {j.schedule ? (
        <Card title={j.schedule_paused ? "Fire times (schedule paused)" : "Fire times"}>
          <SlotTimeline jobId={j.id} paused={j.schedule_paused ?? false} pauseNote={j.pause?.note as string | null | undefined} canWrite={can("jobs:write")} />
        </Card>
      ) : null}
      <Card title="Configuration">
        <Json value={j.config} label="Job configuration" />
        {can("executions:execute") ? (
          <details>
            <summary>Run once with a config override</summary>
            <label htmlFor="override">Config override (JSON object, merged for this run only)</label>
            <textarea id="override" rows={4} value={override} onChange={(e) => setOverride(e.target.value)} spellCheck={false} placeholder='{"batch_size": 10}' />
            <button type="button" disabled={run.isPending} onClick={() => run.mutate()}>
              Run with override
            </button>
          </details>
        ) : null}
      </Card>
      {can("jobs:write") ? (
        <Card title="State">
          <ErrorBox error={jobState.error} />
          {jobState.data ? (
            jobState.data.version === 0 ? (
              <p className="muted">No state yet: the handler has not written ctx.state.</p>
            ) : (
              <>
                <p className="muted">
                  Version {jobState.data.version}, written <Time value={jobState.data.updated_at} />
                </p>
                <Json value={jobState.data.value} label="Job state" />
              </>
            )
          ) : (
            <Loading />
          )}
        </Card>
      ) : null}
      <Card title="Run history">
        <ErrorBox error={runs.error} />
        {runs.data ? (
          <>
            <ExecutionTable items={runs.data.items} showJob={false} />
            {runs.data.items.length === 0 ? <p className="muted">No run yet.</p> : null}
            <Pager page={page} limit={LIMIT} total={runs.data.total} onPage={setPage} />
          </>
        ) : (
          <Loading />
        )}
      </Card>
    </>
  );
}
