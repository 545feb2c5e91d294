import { useMutation, useQueries, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type DragEvent } from "react";
import { Link, useNavigate } from "react-router";
import { api, unwrap, type Schemas } from "../api/client";
import { useAuth } from "../auth";
import { Card, ErrorBox, Loading, PageHeader, Pager, StatusBadge, Time, useUrlFilters, Field } from "../components/ui";

const STATUSES = ["REGISTERED", "INSTALLED", "ENABLED", "DISABLED", "FAILED"] as const;
const LIMIT = 25;

export default function Modules() {
  const { can } = useAuth();
  const { values, settled, page, set, setPage } = useUrlFilters(["search", "status"] as const);
  const list = useQuery({
    queryKey: ["modules", "list", settled, page],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/modules", {
          params: { query: { search: settled.search || undefined, status: (settled.status || undefined) as never, page, limit: LIMIT } },
        }),
      ),
  });
  const counts = useQueries({
    queries: STATUSES.map((status) => ({
      queryKey: ["modules", "count", status],
      queryFn: () => unwrap(api.GET("/api/v1/modules", { params: { query: { status: status as never, limit: 1 } } })),
    })),
  });
  const [showRegister, setShowRegister] = useState(false);

  return (
    <>
      <PageHeader title="Modules">
        {can("modules:write") ? (
          <button type="button" className="primary" onClick={() => setShowRegister((v) => !v)} aria-expanded={showRegister}>
            Register module
          </button>
        ) : null}
      </PageHeader>
      {showRegister ? <RegisterPanel /> : null}
      <div className="chips" role="group" aria-label="Status counts">
        {STATUSES.map((status, i) => (
          <button
            type="button"
            key={status}
            className={values.status === status ? "chip active" : "chip"}
            aria-pressed={values.status === status}
            onClick={() => set({ status: values.status === status ? "" : status })}
          >
            {status} <span className="count">{counts[i].data?.total ?? "…"}</span>
          </button>
        ))}
      </div>
      <div className="filters">
        <Field label="Search">
          <input type="search" value={values.search} onChange={(e) => set({ search: e.target.value })} placeholder="name or description" />
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
                  <th scope="col">Module</th>
                  <th scope="col">Version</th>
                  <th scope="col">Status</th>
                  <th scope="col">Job types</th>
                  <th scope="col">Updated</th>
                </tr>
              </thead>
              <tbody>
                {list.data.items.map((m) => (
                  <tr key={m.id}>
                    <td>
                      <Link to={`/modules/${encodeURIComponent(m.name)}`}>{m.display_name || m.name}</Link>
                      <div className="muted small">{m.description}</div>
                    </td>
                    <td>{m.version}</td>
                    <td>
                      <StatusBadge status={m.status} />
                    </td>
                    <td>{m.job_types}</td>
                    <td>
                      <Time value={m.updated_at} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {list.data.items.length === 0 ? <p className="muted">No module matches.</p> : null}
          <Pager page={page} limit={LIMIT} total={list.data.total} onPage={setPage} />
        </>
      ) : null}
    </>
  );
}

function RegisterPanel() {
  const qc = useQueryClient();
  const navigate = useNavigate();
  const [file, setFile] = useState<File | null>(null);
  const [dragging, setDragging] = useState(false);
  const [manifest, setManifest] = useState("");
  const upload = useMutation({
    mutationFn: async (bundle: File) => {
      const form = new FormData();
      form.append("bundle", bundle);
      return unwrap(
        api.POST("/api/v1/modules", { body: form as never, bodySerializer: (b: unknown) => b as FormData }),
      ) as Promise<Schemas["ModuleRead"]>;
    },
    onSuccess: (m) => {
      void qc.invalidateQueries({ queryKey: ["modules"] });
      navigate(`/modules/${encodeURIComponent(m.name)}`);
    },
  });
  const validate = useMutation({
    mutationFn: async (text: string) => {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (e) {
        throw new Error(`not JSON: ${(e as Error).message}`);
      }
      return unwrap(api.POST("/api/v1/modules/validate", { body: parsed as never }));
    },
  });
  function onDrop(e: DragEvent) {
    e.preventDefault();
    setDragging(false);
    const f = e.dataTransfer.files[0];
    if (f) setFile(f);
  }
  return (
    <div className="grid two">
      <Card title="Upload a bundle">
        <div
          className={dragging ? "dropzone dragging" : "dropzone"}
          onDragOver={(e) => {
            e.preventDefault();
            setDragging(true);
          }}
          onDragLeave={() => setDragging(false)}
          onDrop={onDrop}
        >
          <p>Drop a .zip or .tar.gz here, or choose a file.</p>
          <label htmlFor="bundle-file">Bundle file</label>
          <input id="bundle-file" type="file" accept=".zip,.tar.gz,.tgz" onChange={(e) => setFile(e.target.files?.[0] ?? null)} />
          {file ? <p>Selected: {file.name}</p> : null}
        </div>
        <ErrorBox error={upload.error} />
        <button type="button" className="primary" disabled={!file || upload.isPending} onClick={() => file && upload.mutate(file)}>
          Register
        </button>
      </Card>
      <Card title="Validate a manifest">
        <label htmlFor="manifest-text">manifest.json</label>
        <textarea id="manifest-text" rows={8} value={manifest} onChange={(e) => setManifest(e.target.value)} spellCheck={false} />
        <button type="button" disabled={!manifest || validate.isPending} onClick={() => validate.mutate(manifest)}>
          Validate
        </button>
        <ErrorBox error={validate.error} />
        {validate.data ? <ValidationReport result={validate.data} /> : null}
      </Card>
    </div>
  );
}

function ValidationReport({ result }: { result: Schemas["ValidationResult"] }) {
  return (
    <div className="validation" aria-live="polite">
      <p className={result.valid ? "ok" : "error"}>{result.valid ? "The manifest is valid." : "The manifest is invalid."}</p>
      {[...result.errors.map((i) => ({ ...i, kind: "error" })), ...result.warnings.map((i) => ({ ...i, kind: "warning" }))].map(
        (issue, n) => (
          <div key={n} className={`issue issue-${issue.kind}`}>
            <code>{issue.path || "/"}</code> <span className="muted">{issue.code}</span> {issue.message}
          </div>
        ),
      )}
    </div>
  );
}
