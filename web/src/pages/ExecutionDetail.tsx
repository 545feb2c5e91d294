import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Link, useNavigate, useParams } from "react-router";
import { api, unwrap } from "../api/client";
import { useAuth } from "../auth";
import { Artifacts } from "../components/Artifacts";
import { ExecutionLogs, type LogEntry } from "../components/ExecutionLogs";
import { Card, ConfirmButton, Duration, ErrorBox, FINAL, Json, Loading, PageHeader, StatusBadge, Time } from "../components/ui";

interface Step {
  name?: string;
  status?: string;
  attempts?: number;
  failures?: number;
  started_at?: string;
  finished_at?: string;
  duration_ms?: number;
  error?: unknown;
  result?: unknown;
}

const RETRYABLE = new Set(["FAILED", "TIMED_OUT", "CANCELLED"]);

export default function ExecutionDetail() {
  const { id = "" } = useParams();
  const { can } = useAuth();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const key = ["executions", "detail", id];
  const execution = useQuery({
    queryKey: key,
    queryFn: () => unwrap(api.GET("/api/v1/executions/{execution_id}", { params: { path: { execution_id: id } } })),
    refetchInterval: (q) => (q.state.data && FINAL.has(q.state.data.status) ? false : 2_000),
  });
  const path = { params: { path: { execution_id: id } } };
  const cancel = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/executions/{execution_id}/cancel", path)),
    onSuccess: () => void qc.invalidateQueries({ queryKey: key }),
  });
  const retry = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/executions/{execution_id}/retry", path)),
    onSuccess: (next) => {
      void qc.invalidateQueries({ queryKey: ["executions"] });
      navigate(`/executions/${next.id}`);
    },
  });
  if (execution.isPending) return <Loading />;
  if (execution.error) return <ErrorBox error={execution.error} />;
  const e = execution.data;
  const open = !FINAL.has(e.status);
  const steps = (e.steps ?? []) as Step[];
  return (
    <>
      <PageHeader
        title={
          <>
            {e.module}.{e.job_type} <StatusBadge status={e.status} />
          </>
        }
      >
        {e.temporal_url ? (
          <a className="button" href={e.temporal_url} target="_blank" rel="noreferrer noopener">
            Open in Temporal UI
          </a>
        ) : null}
        {can("executions:execute") && open ? (
          <ConfirmButton label="Cancel run" danger question="Cancel this run? The running step is told to stop." onConfirm={() => cancel.mutate()} />
        ) : null}
        {can("executions:execute") && RETRYABLE.has(e.status) ? (
          <button type="button" className="primary" disabled={retry.isPending} onClick={() => retry.mutate()}>
            Retry
          </button>
        ) : null}
      </PageHeader>
      <ErrorBox error={cancel.error ?? retry.error} />
      {e.status_reason ? <p className="muted">{e.status_reason}</p> : null}
      {e.waiting ? (
        <p className="notice" role="status">
          <strong>Waiting: </strong>
          {e.waiting.message}
          {e.waiting.until ? (
            <>
              {" "}
              (next attempt <Time value={e.waiting.until} />)
            </>
          ) : null}
          {e.waiting.since ? (
            <span className="muted">
              {" "}
              — since <Time value={e.waiting.since} />
            </span>
          ) : null}
        </p>
      ) : null}
      <div className="grid two">
        <Card title="Run">
          <dl className="facts">
            <dt>Execution</dt>
            <dd>
              <code>{e.id}</code>
            </dd>
            <dt>Job</dt>
            <dd>{e.job_id ? <Link to={`/jobs/${e.job_id}`}>{e.job_id.slice(0, 8)}</Link> : "—"}</dd>
            <dt>Module</dt>
            <dd>
              <Link to={`/modules/${encodeURIComponent(e.module)}`}>{e.module}</Link> {e.module_version}
            </dd>
            <dt>Trigger</dt>
            <dd>
              {e.trigger}
              {e.event_id ? <> (event <code>{e.event_id}</code>)</> : null}
            </dd>
            <dt>Attempt</dt>
            <dd>{e.attempt}</dd>
            <dt>Created</dt>
            <dd>
              <Time value={e.created_at} />
            </dd>
            <dt>Started</dt>
            <dd>
              <Time value={e.started_at} />
            </dd>
            <dt>Finished</dt>
            <dd>
              <Time value={e.finished_at} />
            </dd>
            <dt>Duration</dt>
            <dd>
              <Duration ms={e.duration_ms} />
            </dd>
            <dt>Workflow</dt>
            <dd>
              <code className="small">{e.workflow_id}</code>
            </dd>
          </dl>
        </Card>
        <Card title="Steps">
          {steps.length === 0 ? <p className="muted">No step has started.</p> : null}
          <ol className="steps">
            {steps.map((s, i) => (
              <li key={i}>
                <strong>{s.name ?? `step ${i + 1}`}</strong> <StatusBadge status={s.status} />{" "}
                <span className="muted small">
                  {s.attempts ? `attempt ${s.attempts}` : ""}
                  {s.failures ? `, ${s.failures} failed` : ""}
                </span>
                <div className="small">
                  <Time value={s.started_at} /> → <Time value={s.finished_at} />
                  {s.duration_ms != null ? (
                    <>
                      {" "}
                      (<Duration ms={s.duration_ms} />)
                    </>
                  ) : null}
                </div>
                {s.error ? <Json value={s.error} label={`Error of step ${s.name ?? i + 1}`} /> : null}
              </li>
            ))}
          </ol>
        </Card>
      </div>
      {e.error ? (
        <Card title="Error" className="card-error">
          <p className="error-message">{String((e.error as { message?: unknown }).message ?? "")}</p>
          <details>
            <summary>Details</summary>
            <Json value={e.error} label="Error details" />
          </details>
        </Card>
      ) : null}
      <Card title="Logs">
        <ExecutionLogs
          executionId={e.id}
          live={open}
          stored={(e.logs ?? []) as LogEntry[]}
          onEnd={() => void qc.invalidateQueries({ queryKey: key })}
        />
      </Card>
      <div className="grid two">
        <Card title="Result">{e.result === null || e.result === undefined ? <p className="muted">No result.</p> : <Json value={e.result} label="Result" />}</Card>
        <Card title="Config used">
          <Json value={e.config ?? {}} label="Config used" />
        </Card>
      </div>
      <Card title="Artifacts">
        <Artifacts executionId={e.id} />
      </Card>
    </>
  );
}
