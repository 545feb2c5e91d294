import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link, useParams } from "react-router";
import { api, unwrap } from "../api/client";
import { useAuth } from "../auth";
import { Card, ErrorBox, Field, Json, Loading, PageHeader, StatusBadge, Time } from "../components/ui";

type Action = "acknowledge" | "resolve" | "dismiss";
const LABELS: Record<Action, string> = { acknowledge: "Acknowledge", resolve: "Resolve", dismiss: "Dismiss" };

/** One incident: what fired, its timeline and sends, and the actions its state allows. */
export default function IncidentDetail() {
  const { id = "" } = useParams();
  const { can } = useAuth();
  const queryClient = useQueryClient();
  const [note, setNote] = useState("");
  const path = { params: { path: { incident_id: id } } };
  const incident = useQuery({
    queryKey: ["alerts", "incident", id],
    queryFn: () => unwrap(api.GET("/api/v1/alerts/incidents/{incident_id}", path)),
    refetchInterval: 5_000,
  });
  const act = useMutation({
    mutationFn: (action: Action) => {
      const options = { ...path, body: note.trim() ? { note: note.trim() } : {} };
      if (action === "acknowledge") return unwrap(api.POST("/api/v1/alerts/incidents/{incident_id}/acknowledge", options));
      if (action === "resolve") return unwrap(api.POST("/api/v1/alerts/incidents/{incident_id}/resolve", options));
      return unwrap(api.POST("/api/v1/alerts/incidents/{incident_id}/dismiss", options));
    },
    onSuccess: (data) => {
      setNote("");
      queryClient.setQueryData(["alerts", "incident", id], data);
      void queryClient.invalidateQueries({ queryKey: ["alerts"] });
    },
  });
  const i = incident.data;
  if (incident.isPending) return <Loading />;
  if (!i) return <ErrorBox error={incident.error} />;
  const actions = can("alerts:write") ? (i.allowed_actions as Action[]) : [];
  return (
    <>
      <PageHeader title={i.title}>
        <StatusBadge status={i.status} />
        <StatusBadge status={i.severity} />
      </PageHeader>
      <p>
        <Link to="/alerts">All incidents</Link>
      </p>
      <div className="grid">
        <Card title="What fired">
          <p>{i.message}</p>
          <dl className="facts">
            <dt>Rule</dt>
            <dd>{i.rule_id ? <Link to={`/alerts/rules/${i.rule_id}/edit`}>{i.rule_name}</Link> : i.rule_name}</dd>
            {i.dedup_key ? (
              <>
                <dt>Dedup key</dt>
                <dd>
                  <code>{i.dedup_key}</code>
                </dd>
              </>
            ) : null}
            <dt>Labels</dt>
            <dd>
              {Object.entries(i.labels).map(([k, v]) => (
                <code key={k} className="label">
                  {k}={v}
                </code>
              ))}
            </dd>
            <dt>Value</dt>
            <dd>{i.value ?? "—"}</dd>
            <dt>Alerts</dt>
            <dd>{i.fire_count}</dd>
            <dt>Opened</dt>
            <dd>
              <Time value={i.opened_at} />
            </dd>
            <dt>Workflow</dt>
            <dd>
              <code>{i.workflow_id}</code>
            </dd>
          </dl>
        </Card>
        {actions.length ? (
          <Card title="Act">
            <Field label="Note (optional)">
              <textarea rows={3} value={note} maxLength={2000} onChange={(e) => setNote(e.target.value)} />
            </Field>
            <div className="actions">
              {actions.map((a) => (
                <button key={a} type="button" className={a === "acknowledge" ? "primary" : undefined} disabled={act.isPending} onClick={() => act.mutate(a)}>
                  {LABELS[a]}
                </button>
              ))}
            </div>
            <ErrorBox error={act.error} />
          </Card>
        ) : null}
      </div>
      <Card title="Timeline">
        <ol className="timeline">
          {i.timeline.map((e) => (
            <li key={e.seq}>
              <Time value={e.at} /> <strong>{e.kind}</strong> <span className="muted">by {e.actor ?? "system"}</span>
              {e.severity && e.kind === "escalated" ? <> → <StatusBadge status={e.severity} /></> : null}
              {e.note ? <div>{e.note}</div> : null}
              {e.message && e.kind !== "opened" ? <div className="muted small">{e.message}</div> : null}
            </li>
          ))}
        </ol>
      </Card>
      <Card title="Notifications">
        {i.notifications.length ? (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Transition</th>
                  <th scope="col">Channel</th>
                  <th scope="col">Outcome</th>
                  <th scope="col">Attempts</th>
                  <th scope="col">Sent</th>
                </tr>
              </thead>
              <tbody>
                {i.notifications.map((n) => (
                  <tr key={n.key}>
                    <td>{n.transition}</td>
                    <td>
                      <code>{n.channel}</code>
                    </td>
                    <td>
                      <StatusBadge status={n.status} /> {n.error ? <span className="muted small">{n.error}</span> : null}
                    </td>
                    <td>{n.attempts}</td>
                    <td>
                      <Time value={n.sent_at} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <p className="muted">No notification: the rule routes none for this severity.</p>
        )}
      </Card>
      {i.notifications.some((n) => n.outcome) ? (
        <details>
          <summary>Send outcomes</summary>
          <Json value={i.notifications.map((n) => ({ key: n.key, outcome: n.outcome }))} label="Send outcomes" />
        </details>
      ) : null}
    </>
  );
}
