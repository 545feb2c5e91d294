import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { lazy, Suspense, useRef, useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, ApiError, unwrap } from "../api/client";
import { useAuth } from "../auth";
import type { Config, SchemaFormHandle } from "../components/SchemaForm";
import { configErrors, secretsToSend, withoutSecrets } from "../components/SchemaForm";
import { Card, ConfirmButton, ErrorBox, Json, Loading, PageHeader, StatusBadge, Time } from "../components/ui";

const SchemaForm = lazy(() => import("../components/SchemaForm").then((m) => ({ default: m.SchemaForm })));

type Manifest = Record<string, unknown> & {
  routes?: { method?: string; path?: string; job?: string; description?: string }[];
  events?: { listeners?: { pattern?: string; job?: string; description?: string }[]; emits?: { name?: string; description?: string }[] };
  dependencies?: unknown;
  permissions?: unknown;
};

const ACTION_LABEL: Record<string, string> = {
  install: "Install",
  enable: "Enable",
  disable: "Disable",
  uninstall: "Uninstall",
  delete: "Delete",
};

export default function ModuleDetail() {
  const { name = "" } = useParams();
  const { can } = useAuth();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const module = useQuery({
    queryKey: ["modules", "detail", name],
    queryFn: () => unwrap(api.GET("/api/v1/modules/{name}", { params: { path: { name } } })),
  });
  const jobTypes = useQuery({
    queryKey: ["modules", "job-types", name],
    queryFn: () => unwrap(api.GET("/api/v1/modules/{name}/job-types", { params: { path: { name }, query: { limit: 200 } } })),
  });
  const pages = useQuery({ queryKey: ["ui", "pages"], queryFn: () => unwrap(api.GET("/api/v1/ui/pages")), staleTime: 30_000 });
  const modulePages = pages.data?.modules.find((p) => p.module === name)?.pages ?? [];
  const versions = useQuery({
    queryKey: ["modules", "versions", name],
    queryFn: () => unwrap(api.GET("/api/v1/modules/{name}/versions", { params: { path: { name }, query: { limit: 50 } } })),
  });
  const action = useMutation({
    mutationFn: async (act: string) => {
      const path = { params: { path: { name } } };
      switch (act) {
        case "install":
          return unwrap(api.POST("/api/v1/modules/{name}/install", path));
        case "enable":
          return unwrap(api.POST("/api/v1/modules/{name}/enable", path));
        case "disable":
          return unwrap(api.POST("/api/v1/modules/{name}/disable", path));
        case "uninstall":
          return unwrap(api.POST("/api/v1/modules/{name}/uninstall", path));
        case "delete":
          await unwrap(api.DELETE("/api/v1/modules/{name}", path));
          return null;
        default:
          throw new Error(`unknown action ${act}`);
      }
    },
    onSuccess: (_data, act) => {
      void qc.invalidateQueries({ queryKey: ["modules"] });
      if (act === "delete") navigate("/modules");
    },
    onError: () => void qc.invalidateQueries({ queryKey: ["modules", "detail", name] }),
  });

  if (module.isPending) return <Loading />;
  if (module.error) return <ErrorBox error={module.error} />;
  const m = module.data;
  const manifest = m.manifest as Manifest;
  const lifecycle = m.allowed_actions.filter((a) => a in ACTION_LABEL);

  return (
    <>
      <PageHeader
        title={
          <>
            {m.display_name || m.name} <StatusBadge status={m.status} />
          </>
        }
      >
        {can("modules:write")
          ? lifecycle.map((a) =>
              a === "delete" || a === "uninstall" || a === "disable" ? (
                <ConfirmButton
                  key={a}
                  label={ACTION_LABEL[a]}
                  danger={a !== "disable"}
                  question={`${ACTION_LABEL[a]} module ${m.name}?`}
                  disabled={action.isPending}
                  onConfirm={() => action.mutate(a)}
                />
              ) : (
                <button key={a} type="button" className="primary" disabled={action.isPending} onClick={() => action.mutate(a)}>
                  {ACTION_LABEL[a]}
                </button>
              ),
            )
          : null}
      </PageHeader>
      <ErrorBox error={action.error} />
      <p className="description">{m.description || String(manifest.description ?? "")}</p>
      {m.status_reason ? <p className="error">{m.status_reason}</p> : null}
      <dl className="facts">
        <dt>Name</dt>
        <dd>{m.name}</dd>
        <dt>Version</dt>
        <dd>{m.version}</dd>
        <dt>Author</dt>
        <dd>{m.author ?? "—"}</dd>
        <dt>Updated</dt>
        <dd>
          <Time value={m.updated_at} />
        </dd>
      </dl>

      <Card title="Job types">
        <ErrorBox error={jobTypes.error} />
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Job type</th>
                <th scope="col">Workflow type</th>
                <th scope="col">Default schedule</th>
                <th scope="col">Timeout</th>
                <th scope="col">Steps</th>
              </tr>
            </thead>
            <tbody>
              {jobTypes.data?.items.map((jt) => (
                <tr key={jt.name}>
                  <td>
                    <strong>{jt.display_name || jt.name}</strong>
                    <div className="muted small">{jt.description}</div>
                  </td>
                  <td>
                    <code>{jt.workflow_type}</code>
                  </td>
                  <td>{jt.schedule ? <code>{jt.schedule}</code> : "—"}</td>
                  <td>{jt.timeout_seconds} s</td>
                  <td>
                    {jt.steps.length
                      ? jt.steps.map((s, i) => (
                          <span key={s.name ?? i}>
                            {i ? " → " : ""}
                            <code>{s.name}</code>
                            {s.for_each ? <span className="muted small">{` (each item, ${s.for_each.concurrency} at once)`}</span> : null}
                          </span>
                        ))
                      : 1}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
        {can("jobs:write") && m.status === "ENABLED" ? (
          <Link to={`/jobs/new?module=${encodeURIComponent(m.name)}`}>Create a job of this module</Link>
        ) : null}
      </Card>

      <div className="grid two">
        {modulePages.length ? (
          <Card title="Pages">
            <ul className="plain">
              {modulePages.map((p) => (
                <li key={p.name}>
                  <Link to={`/m/${encodeURIComponent(name)}/${p.name}`}>{p.title}</Link>
                  {p.description ? <span className="muted small">{` — ${p.description}`}</span> : null}
                </li>
              ))}
            </ul>
          </Card>
        ) : null}
        <Card title="Routes">
          {manifest.routes?.length ? (
            <ul className="plain">
              {manifest.routes.map((r, i) => (
                <li key={i}>
                  <code>
                    {r.method ?? "GET"} /api/v1/m/{m.name}
                    {r.path}
                  </code>{" "}
                  <span className="muted">→ {r.job}</span>
                  <pre className="curl">{`curl -X ${r.method ?? "GET"} -H "Authorization: Bearer $TOKEN" ${location.origin}/api/v1/m/${m.name}${r.path ?? ""}`}</pre>
                </li>
              ))}
            </ul>
          ) : (
            <p className="muted">No HTTP routes.</p>
          )}
        </Card>
        <Card title="Event listeners">
          {manifest.events?.listeners?.length ? (
            <ul className="plain">
              {manifest.events.listeners.map((l, i) => (
                <li key={i}>
                  <code>{l.pattern}</code> → {l.job} <span className="muted">{l.description}</span>
                </li>
              ))}
            </ul>
          ) : (
            <p className="muted">No listeners.</p>
          )}
          {manifest.events?.emits?.length ? (
            <>
              <h3>Emits</h3>
              <ul className="plain">
                {manifest.events.emits.map((e, i) => (
                  <li key={i}>
                    <code>{e.name}</code> <span className="muted">{e.description}</span>
                  </li>
                ))}
              </ul>
            </>
          ) : null}
        </Card>
        <Card title="Dependencies and permissions">
          <Json value={{ dependencies: manifest.dependencies ?? [], permissions: manifest.permissions ?? {} }} label="Dependencies and permissions" />
        </Card>
        <Card title="Versions">
          <ErrorBox error={versions.error} />
          <ul className="plain">
            {versions.data?.items.map((v) => (
              <li key={v.id}>
                <strong>{v.version}</strong> {v.current ? <span className="badge">current</span> : null} <Time value={v.created_at} />{" "}
                <span className="muted small">{v.bundle_sha256?.slice(0, 12)}</span>
              </li>
            ))}
          </ul>
        </Card>
      </div>
      <ModuleConfig name={m.name} editable={can("modules:write")} />
      <Card title="Manifest">
        <details>
          <summary>Show manifest.json</summary>
          <Json value={m.manifest} label="Manifest" />
        </details>
      </Card>
    </>
  );
}

function ModuleConfig({ name, editable }: { name: string; editable: boolean }) {
  const qc = useQueryClient();
  const config = useQuery({
    queryKey: ["modules", "config", name],
    queryFn: () => unwrap(api.GET("/api/v1/modules/{name}/config", { params: { path: { name } } })),
  });
  const [draft, setDraft] = useState<Config | null>(null);
  const [saved, setSaved] = useState(false);
  const form = useRef<SchemaFormHandle>(null);
  const save = useMutation({
    mutationFn: (value: Config) =>
      unwrap(api.PUT("/api/v1/modules/{name}/config", { params: { path: { name } }, body: { config: value } })),
    onSuccess: () => {
      setDraft(null);
      setSaved(true);
      void qc.invalidateQueries({ queryKey: ["modules", "config", name] });
    },
  });
  if (config.isPending) return <Loading what="Loading configuration" />;
  if (config.error) return <ErrorBox error={config.error} />;
  const c = config.data;
  if (!c.config_schema || Object.keys((c.config_schema.properties as object) ?? {}).length === 0) return null;
  const setSecrets = c.secret_fields.filter((k) => c.config[k] !== undefined && c.config[k] !== null);
  const value = draft ?? withoutSecrets(c.config, c.secret_fields);
  return (
    <Card title="Configuration">
      {setSecrets.length ? <p className="muted">Secrets set: {setSecrets.join(", ")} (write-only, never shown).</p> : null}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setSaved(false);
          if (form.current?.validate() === false) return;
          save.mutate(secretsToSend(value, c.secret_fields));
        }}
      >
        <Suspense fallback={<Loading what="Loading form" />}>
          <SchemaForm
            ref={form}
            schema={c.config_schema}
            value={value}
            onChange={setDraft}
            secretFields={c.secret_fields}
            disabled={!editable}
            idPrefix="moduleconfig"
            extraErrors={save.error instanceof ApiError ? configErrors(save.error.details) : undefined}
          />
        </Suspense>
        <ErrorBox error={save.error} />
        {saved ? <p role="status" className="ok">Configuration saved.</p> : null}
        {editable ? (
          <button type="submit" className="primary" disabled={save.isPending}>
            Save configuration
          </button>
        ) : null}
      </form>
    </Card>
  );
}
