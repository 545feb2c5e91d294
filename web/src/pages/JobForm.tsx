import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useRef, useState, type FormEvent } from "react";
import { Link, useNavigate, useParams, useSearchParams } from "react-router";
import { api, ApiError, unwrap, type Schemas } from "../api/client";
import { useAuth } from "../auth";
import { ScheduleField } from "../components/ScheduleField";
import { configErrors, SchemaForm, secretsToSend, withoutSecrets, type Config, type SchemaFormHandle } from "../components/SchemaForm";
import { ErrorBox, Loading, PageHeader, Field } from "../components/ui";

type JobType = Schemas["JobTypeRead"];
type Job = Schemas["JobRead"];
const OVERLAPS = ["skip", "buffer_one", "allow_all", "cancel_other"] as const;

interface Draft {
  name: string;
  description: string;
  schedule: string;
  timezone: string;
  timeout: string;
  attempts: string;
  overlap: string;
  enabled: boolean;
  config: Config;
}

function draftFromJobType(jt: JobType, name: string): Draft {
  return {
    name,
    description: "",
    schedule: jt.schedule ?? "",
    timezone: jt.timezone ?? "UTC",
    timeout: String(jt.timeout_seconds),
    attempts: String(jt.max_attempts),
    overlap: jt.overlap,
    enabled: true,
    config: withoutSecrets(jt.defaults, jt.secret_fields),
  };
}

function draftFromJob(job: Job, jt: JobType | undefined): Draft {
  return {
    name: job.name,
    description: job.description,
    schedule: job.schedule ?? "",
    timezone: job.timezone,
    timeout: String(job.timeout_seconds),
    attempts: String(job.max_attempts),
    overlap: job.overlap,
    enabled: job.enabled,
    config: withoutSecrets(job.config, jt?.secret_fields ?? []),
  };
}

/** 422 details for a top-level body field, e.g. ``schedule``. */
function fieldError(error: unknown, field: string): string | undefined {
  if (!(error instanceof ApiError) || !Array.isArray(error.details)) return undefined;
  const hit = (error.details as { loc?: unknown[]; msg?: string }[]).find(
    (d) => Array.isArray(d.loc) && d.loc[0] === "body" && d.loc[1] === field,
  );
  return hit?.msg;
}

export default function JobForm() {
  const { id } = useParams();
  const { can } = useAuth();
  const [params] = useSearchParams();
  const navigate = useNavigate();
  const qc = useQueryClient();
  const editing = Boolean(id);
  const job = useQuery({
    queryKey: ["jobs", "detail", id],
    queryFn: () => unwrap(api.GET("/api/v1/jobs/{job_id}", { params: { path: { job_id: id! } } })),
    enabled: editing,
  });
  const [module, setModule] = useState(params.get("module") ?? "");
  const [jobTypeName, setJobTypeName] = useState("");
  const [draft, setDraft] = useState<Draft | null>(null);
  const formRef = useRef<SchemaFormHandle>(null);

  const modules = useQuery({
    queryKey: ["modules", "list", { status: "ENABLED" }],
    queryFn: () => unwrap(api.GET("/api/v1/modules", { params: { query: { status: "ENABLED", limit: 200 } } })),
    enabled: !editing,
  });
  const moduleName = editing ? job.data?.module ?? "" : module;
  const jobTypes = useQuery({
    queryKey: ["modules", "job-types", moduleName],
    queryFn: () =>
      unwrap(api.GET("/api/v1/modules/{name}/job-types", { params: { path: { name: moduleName }, query: { limit: 200 } } })),
    enabled: moduleName.length > 0,
  });
  const selectedName = editing ? job.data?.job_type ?? "" : jobTypeName;
  const jobType = jobTypes.data?.items.find((jt) => jt.name === selectedName);

  useEffect(() => {
    if (editing && job.data && jobTypes.data && draft === null) setDraft(draftFromJob(job.data, jobType));
  }, [editing, job.data, jobTypes.data, jobType, draft]);

  const save = useMutation({
    mutationFn: async (d: Draft) => {
      const common = {
        name: d.name,
        description: d.description,
        schedule: d.schedule.trim() || null,
        timezone: d.timezone,
        enabled: d.enabled,
        timeout_seconds: Number(d.timeout),
        max_attempts: Number(d.attempts),
        overlap: d.overlap as (typeof OVERLAPS)[number],
        config: secretsToSend(d.config, jobType?.secret_fields ?? []),
      };
      if (editing) return unwrap(api.PATCH("/api/v1/jobs/{job_id}", { params: { path: { job_id: id! } }, body: common }));
      return unwrap(api.POST("/api/v1/jobs", { body: { module, job_type: jobTypeName, ...common } })) as Promise<Job>;
    },
    onSuccess: (saved) => {
      void qc.invalidateQueries({ queryKey: ["jobs"] });
      navigate(`/jobs/${saved.id}`);
    },
  });

  if (!can("jobs:write")) return <ErrorBox error={new Error("Your role cannot create or edit jobs.")} />;
  if (editing && job.isPending) return <Loading />;
  if (editing && job.error) return <ErrorBox error={job.error} />;

  function update(changes: Partial<Draft>) {
    setDraft((d) => (d ? { ...d, ...changes } : d));
  }
  function submit(e: FormEvent) {
    e.preventDefault();
    if (!draft) return;
    if (formRef.current && !formRef.current.validate()) return;
    save.mutate(draft);
  }

  return (
    <>
      <PageHeader title={editing ? `Edit job ${job.data?.name ?? ""}` : "Create job"}>
        <Link to={editing ? `/jobs/${id}` : "/jobs"}>Cancel</Link>
      </PageHeader>
      <form onSubmit={submit} className="job-form" noValidate>
        <fieldset>
          <legend>What to run</legend>
          <div className="row">
            <Field label="Module">
              <select
                name="module"
                value={moduleName}
                disabled={editing}
                required
                onChange={(e) => {
                  setModule(e.target.value);
                  setJobTypeName("");
                  setDraft(null);
                }}
              >
                <option value="">Choose a module…</option>
                {editing && moduleName ? <option value={moduleName}>{moduleName}</option> : null}
                {modules.data?.items.map((m) => (
                  <option key={m.name} value={m.name}>
                    {m.display_name || m.name}
                  </option>
                ))}
              </select>
            </Field>
            <Field label="Job type">
              <select
                name="job_type"
                value={selectedName}
                disabled={editing || !moduleName || jobTypes.isPending}
                required
                onChange={(e) => {
                  const jt = jobTypes.data?.items.find((t) => t.name === e.target.value);
                  setJobTypeName(e.target.value);
                  setDraft(jt ? draftFromJobType(jt, draft?.name || jt.display_name || jt.name) : null);
                }}
              >
                <option value="">{moduleName ? "Choose a job type…" : "Choose a module first"}</option>
                {jobTypes.data?.items.map((jt) => (
                  <option key={jt.name} value={jt.name}>
                    {jt.display_name || jt.name}
                  </option>
                ))}
              </select>
            </Field>
          </div>
          <ErrorBox error={modules.error ?? jobTypes.error} />
          {jobType ? <p className="muted">{jobType.description}</p> : null}
        </fieldset>

        {draft && jobType ? (
          <>
            <fieldset>
              <legend>Job</legend>
              <div className="row">
                <Field label="Name">
                  <input id="job-name" name="name" required value={draft.name} onChange={(e) => update({ name: e.target.value })} />
                </Field>
                <Field label="Description" className="grow">
                  <input id="job-description" name="description" value={draft.description} onChange={(e) => update({ description: e.target.value })} />
                </Field>
              </div>
              {fieldError(save.error, "name") ? <p className="field-error">{fieldError(save.error, "name")}</p> : null}
            </fieldset>
            <fieldset>
              <legend>Configuration</legend>
              {Object.keys((jobType.config_schema.properties as object) ?? {}).length ? (
                <SchemaForm
                  ref={formRef}
                  schema={jobType.config_schema}
                  value={draft.config}
                  onChange={(config) => update({ config })}
                  secretFields={jobType.secret_fields}
                  extraErrors={save.error instanceof ApiError ? configErrors(save.error.details) : undefined}
                />
              ) : (
                <p className="muted">This job type takes no configuration.</p>
              )}
            </fieldset>
            <ScheduleField
              cron={draft.schedule}
              timezone={draft.timezone}
              onChange={(schedule, timezone) => update({ schedule, timezone })}
              error={fieldError(save.error, "schedule") ?? fieldError(save.error, "timezone")}
            />
            <fieldset>
              <legend>Execution</legend>
              <div className="row">
                <Field label="Timeout (seconds)">
                  <input name="timeout_seconds" type="number" min={1} max={86400} value={draft.timeout} onChange={(e) => update({ timeout: e.target.value })} />
                </Field>
                <Field label="Attempts">
                  <input name="attempts" type="number" min={1} max={101} value={draft.attempts} onChange={(e) => update({ attempts: e.target.value })} />
                </Field>
                <Field label="When a run overlaps">
                  <select name="overlap" value={draft.overlap} onChange={(e) => update({ overlap: e.target.value })}>
                    {OVERLAPS.map((o) => (
                      <option key={o} value={o}>
                        {o}
                      </option>
                    ))}
                  </select>
                </Field>
                <label className="check">
                  <input type="checkbox" name="enabled" checked={draft.enabled} onChange={(e) => update({ enabled: e.target.checked })} />
                  Enabled
                </label>
              </div>
            </fieldset>
            <ErrorBox error={save.error} />
            <button type="submit" className="primary" disabled={save.isPending}>
              {editing ? "Save job" : "Create job"}
            </button>
          </>
        ) : null}
      </form>
    </>
  );
}
