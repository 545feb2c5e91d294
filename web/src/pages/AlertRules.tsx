import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Link, useSearchParams } from "react-router";
import { api, unwrap, type Schemas } from "../api/client";
import { useAuth } from "../auth";
import { ErrorBox, Loading, PageHeader, StatusBadge, Time } from "../components/ui";

/** Alert rules: what each watches, its severity, open incidents; enable / disable in place. */
export default function AlertRules() {
  const { can } = useAuth();
  const queryClient = useQueryClient();
  // ?module=<name>: the rules a module ships (linked from its pages).
  const module = useSearchParams()[0].get("module") || undefined;
  const rules = useQuery({
    queryKey: ["alerts", "rules", module ?? ""],
    queryFn: () => unwrap(api.GET("/api/v1/alerts/rules", { params: { query: { module } } })),
    refetchInterval: 10_000,
  });
  const toggle = useMutation({
    mutationFn: ({ id, enabled }: { id: string; enabled: boolean }) =>
      unwrap(api.PATCH("/api/v1/alerts/rules/{rule_id}", { params: { path: { rule_id: id } }, body: { enabled } })),
    onSuccess: () => void queryClient.invalidateQueries({ queryKey: ["alerts", "rules"] }),
  });
  const writable = can("alerts:write");
  return (
    <>
      <PageHeader title={module ? `Alert rules of ${module}` : "Alert rules"}>
        {module ? (
          <Link className="button" to="/alerts/rules">
            All rules
          </Link>
        ) : null}
        <Link className="button" to="/alerts">
          Incidents
        </Link>
        {writable ? (
          <Link className="button primary" to="/alerts/rules/new">
            Create rule
          </Link>
        ) : null}
      </PageHeader>
      <ErrorBox error={rules.error ?? toggle.error} />
      {rules.isPending ? <Loading /> : null}
      {rules.data ? (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Rule</th>
                <th scope="col">Source</th>
                <th scope="col">Severity</th>
                <th scope="col">Open incidents</th>
                <th scope="col">Last evaluated</th>
                <th scope="col">Enabled</th>
              </tr>
            </thead>
            <tbody>
              {rules.data.items.map((r) => (
                <tr key={r.id}>
                  <td>
                    <Link to={`/alerts/rules/${r.id}/edit`}>{r.name}</Link> <OriginBadges rule={r} />
                    <div className="muted small">{summary(r.source, r.condition)}</div>
                  </td>
                  <td>{r.source}</td>
                  <td>
                    <StatusBadge status={r.severity} />
                  </td>
                  <td>{r.open_incidents ? <Link to="/alerts?status=firing">{r.open_incidents}</Link> : 0}</td>
                  <td>
                    <Time value={r.last_evaluated_at} />
                  </td>
                  <td>
                    <label className="check">
                      <input
                        type="checkbox"
                        checked={r.enabled}
                        disabled={!writable || toggle.isPending}
                        onChange={(e) => toggle.mutate({ id: r.id, enabled: e.target.checked })}
                        aria-label={`${r.name} enabled`}
                      />{" "}
                      {r.enabled ? "yes" : "no"}
                    </label>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {rules.data.items.length === 0 ? <p className="muted">No alert rule yet.</p> : null}
        </div>
      ) : null}
    </>
  );
}

/** Where a rule comes from: "from module X" for a rule a module ships, "modified" once an operator
 * changed it, "detached" when its module no longer ships it, "paused" while the module is disabled. */
export function OriginBadges({ rule }: { rule: Schemas["AlertRuleRead"] }) {
  if (rule.origin !== "module") return null;
  return (
    <>
      <span className="badge" data-testid="rule-origin" title={`Shipped by module ${rule.module_name} as "${rule.module_rule}"`}>
        from module {rule.module_name}
      </span>
      {rule.modified ? (
        <span className="badge badge-pending" data-testid="rule-modified" title="Changed by an operator: upgrades of the module leave it alone">
          modified
        </span>
      ) : null}
      {rule.detached ? (
        <span className="badge" title="The module no longer ships this rule; it was kept because it was modified">
          detached
        </span>
      ) : null}
      {rule.paused_reason ? (
        <span className="badge badge-failed" title={rule.paused_reason}>
          paused
        </span>
      ) : null}
    </>
  );
}

/** One line on what a rule watches (text only: values come from the API). */
export function summary(source: string, c: Record<string, unknown>): string {
  if (source === "series")
    return `${c.agg}(${c.module}.${c.series}.${c.field}) over ${c.window_minutes} min ${c.op} ${c.threshold}`;
  if (source === "event") return `events ${c.pattern}`;
  return c.failures ? `${c.job} failed ${c.failures}× in a row` : `${c.job} not succeeded for ${c.not_succeeded_minutes} min`;
}
