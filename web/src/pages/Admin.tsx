import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api, unwrap, type Schemas } from "../api/client";
import { useAuth } from "../auth";
import { Card, ConfirmButton, ErrorBox, Json, Loading, PageHeader, Pager, Time, useUrlFilters, Field } from "../components/ui";

const ROLES = ["admin", "operator", "viewer"] as const;
type Role = (typeof ROLES)[number];
const LIMIT = 25;

export default function Admin() {
  const { can } = useAuth();
  if (!can("users:read") && !can("audit:read")) return <ErrorBox error={new Error("Your role cannot see the admin pages.")} />;
  return (
    <>
      <PageHeader title="Admin" />
      {can("users:read") ? <Users /> : null}
      {can("audit:read") ? <Audit /> : null}
    </>
  );
}

function Users() {
  const { can, me } = useAuth();
  const qc = useQueryClient();
  const { values, settled, page, set, setPage } = useUrlFilters(["search", "role"] as const);
  const users = useQuery({
    queryKey: ["users", settled, page],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/users", {
          params: { query: { search: settled.search || undefined, role: (settled.role || undefined) as never, page, limit: LIMIT } },
        }),
      ),
  });
  const update = useMutation({
    mutationFn: ({ id, body }: { id: string; body: Schemas["UserUpdate"] }) =>
      unwrap(api.PATCH("/api/v1/users/{user_id}", { params: { path: { user_id: id } }, body })),
    onSuccess: () => void qc.invalidateQueries({ queryKey: ["users"] }),
  });
  const revoke = useMutation({
    mutationFn: (id: string) => unwrap(api.POST("/api/v1/users/{user_id}/revoke-sessions", { params: { path: { user_id: id } } })),
  });
  const writable = can("users:write");
  return (
    <Card title="Users">
      {writable ? <CreateUser /> : null}
      <div className="filters">
        <Field label="Search">
          <input type="search" value={values.search} onChange={(e) => set({ search: e.target.value })} placeholder="email or name" />
        </Field>
        <Field label="Role">
          <select value={values.role} onChange={(e) => set({ role: e.target.value })}>
            <option value="">Any</option>
            {ROLES.map((r) => (
              <option key={r}>{r}</option>
            ))}
          </select>
        </Field>
      </div>
      <ErrorBox error={users.error ?? update.error ?? revoke.error} />
      {revoke.data ? <p role="status" className="ok">Revoked {revoke.data.revoked_sessions} session(s).</p> : null}
      {users.isPending ? <Loading /> : null}
      {users.data ? (
        <>
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">User</th>
                  <th scope="col">Role</th>
                  <th scope="col">Active</th>
                  <th scope="col">Last login</th>
                  {writable ? <th scope="col">Actions</th> : null}
                </tr>
              </thead>
              <tbody>
                {users.data.items.map((u) => (
                  <tr key={u.id}>
                    <td>
                      {u.full_name || u.username || u.email}
                      <div className="muted small">{u.email}</div>
                    </td>
                    <td>
                      {writable && u.id !== me?.id ? (
                        <select
                          aria-label={`Role of ${u.email}`}
                          value={u.role}
                          onChange={(e) => update.mutate({ id: u.id, body: { role: e.target.value as Role } })}
                        >
                          {ROLES.map((r) => (
                            <option key={r}>{r}</option>
                          ))}
                        </select>
                      ) : (
                        u.role
                      )}
                    </td>
                    <td>{u.is_active ? "yes" : "no"}</td>
                    <td>
                      <Time value={u.last_login_at} />
                    </td>
                    {writable ? (
                      <td className="actions">
                        {u.id !== me?.id ? (
                          <button type="button" onClick={() => update.mutate({ id: u.id, body: { is_active: !u.is_active } })}>
                            {u.is_active ? "Deactivate" : "Activate"}
                          </button>
                        ) : null}
                        <ConfirmButton label="Revoke sessions" question={`Sign ${u.email} out everywhere?`} onConfirm={() => revoke.mutate(u.id)} />
                      </td>
                    ) : null}
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Pager page={page} limit={LIMIT} total={users.data.total} onPage={setPage} />
        </>
      ) : null}
    </Card>
  );
}

function CreateUser() {
  const qc = useQueryClient();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState<Role>("viewer");
  const create = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/users", { body: { email, password, role, is_active: true } })),
    onSuccess: () => {
      setEmail("");
      setPassword("");
      void qc.invalidateQueries({ queryKey: ["users"] });
    },
  });
  function submit(e: FormEvent) {
    e.preventDefault();
    create.mutate();
  }
  return (
    <details>
      <summary>Create a user</summary>
      <form onSubmit={submit} className="row">
        <Field label="Email">
          <input type="email" value={email} onChange={(e) => setEmail(e.target.value)} required autoComplete="off" />
        </Field>
        <Field label="Password">
          <input type="password" value={password} onChange={(e) => setPassword(e.target.value)} required autoComplete="new-password" />
        </Field>
        <Field label="Role">
          <select value={role} onChange={(e) => setRole(e.target.value as Role)}>
            {ROLES.map((r) => (
              <option key={r}>{r}</option>
            ))}
          </select>
        </Field>
        <button type="submit" className="primary" disabled={create.isPending}>
          Create user
        </button>
      </form>
      <ErrorBox error={create.error} />
    </details>
  );
}

function Audit() {
  const { values, settled, page, set, setPage } = useUrlFilters(["action", "outcome", "actor_id", "audit_since"] as const, "audit_page");
  const audit = useQuery({
    queryKey: ["audit", settled, page],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/audit", {
          params: {
            query: {
              action: settled.action || undefined,
              outcome: settled.outcome || undefined,
              actor_id: settled.actor_id || undefined,
              since: settled.audit_since || undefined,
              page,
              limit: LIMIT,
            },
          },
        }),
      ),
  });
  return (
    <Card title="Audit log">
      <div className="filters">
        <Field label="Action">
          <input value={values.action} onChange={(e) => set({ action: e.target.value })} placeholder="job.* or POST /api/v1/jobs" />
        </Field>
        <Field label="Outcome">
          <select value={values.outcome} onChange={(e) => set({ outcome: e.target.value })}>
            <option value="">Any</option>
            <option value="success">success</option>
            <option value="failure">failure</option>
          </select>
        </Field>
        <Field label="Actor id">
          <input value={values.actor_id} onChange={(e) => set({ actor_id: e.target.value })} />
        </Field>
      </div>
      <ErrorBox error={audit.error} />
      {audit.data ? (
        <>
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">When</th>
                  <th scope="col">Actor</th>
                  <th scope="col">Action</th>
                  <th scope="col">Target</th>
                  <th scope="col">Outcome</th>
                  <th scope="col">Details</th>
                </tr>
              </thead>
              <tbody>
                {audit.data.items.map((a) => (
                  <tr key={a.id}>
                    <td>
                      <Time value={a.at} />
                    </td>
                    <td>{a.actor_email ?? "—"}</td>
                    <td>
                      <code>{a.action}</code>
                    </td>
                    <td className="small">
                      {a.target_type} {a.target_id}
                    </td>
                    <td>{a.outcome}</td>
                    <td>
                      {a.details ? (
                        <details>
                          <summary>show</summary>
                          <Json value={a.details} label={`Details of audit entry ${a.id}`} />
                        </details>
                      ) : null}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Pager page={page} limit={LIMIT} total={audit.data.total} onPage={setPage} />
        </>
      ) : (
        <Loading />
      )}
    </Card>
  );
}
