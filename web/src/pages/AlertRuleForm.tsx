import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useState, type FormEvent } from "react";
import { useNavigate, useParams } from "react-router";
import { api, unwrap, type Schemas } from "../api/client";
import { useAuth } from "../auth";
import { Card, ConfirmButton, ErrorBox, Field, Loading, PageHeader } from "../components/ui";
import { OriginBadges } from "./AlertRules";

type Source = "series" | "event" | "job";
type Severity = "info" | "warning" | "critical";

const EXAMPLES: Record<Source, { condition: unknown; message: string }> = {
  series: {
    condition: { module: "meters", series: "meter", field: "power_w", agg: "avg", window_minutes: 5, op: "gt", threshold: 3000, resolve_threshold: 2800, for_evaluations: 2 },
    message: "{{labels.meter}} draws {{value}} W (limit {{threshold}} W)",
  },
  event: {
    condition: { pattern: "meter.alarm", join: "and", conditions: [{ path: "level", op: "gte", value: 5 }], group_by: ["meter"] },
    message: "{{event.payload.meter}} raised level {{event.payload.level}}",
  },
  job: { condition: { job: "data-sync.hourly-sync", failures: 3 }, message: "{{job.module}}.{{job.job_type}} failed {{failures}} times" },
};

interface Draft {
  name: string;
  severity: Severity;
  source: Source;
  message: string;
  condition: string;
  routes: string;
  active: string;
  escalation: string;
  interval_seconds: string;
  cooldown_seconds: string;
  enabled: boolean;
}

const NEW: Draft = {
  name: "",
  severity: "warning",
  source: "series",
  message: EXAMPLES.series.message,
  condition: JSON.stringify(EXAMPLES.series.condition, null, 2),
  routes: JSON.stringify([{ channels: ["ops-hook"], on: ["opened", "escalated", "resolved"] }], null, 2),
  active: "[]",
  escalation: "",
  interval_seconds: "",
  cooldown_seconds: "0",
  enabled: true,
};

function fromRule(r: Schemas["AlertRuleRead"]): Draft {
  return {
    name: r.name,
    severity: r.severity as Severity,
    source: r.source as Source,
    message: r.message,
    condition: JSON.stringify(r.condition, null, 2),
    routes: JSON.stringify(r.routes, null, 2),
    active: JSON.stringify(r.active, null, 2),
    escalation: r.escalation ? JSON.stringify(r.escalation, null, 2) : "",
    interval_seconds: String(r.interval_seconds),
    cooldown_seconds: String(r.cooldown_seconds),
    enabled: r.enabled,
  };
}

function parse(label: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${label} is not JSON: ${(e as Error).message}`);
  }
}

/** The rule as the API takes it; the API checks it and names the field it refuses. */
function body(d: Draft): Schemas["AlertRuleCreate"] {
  return {
    name: d.name,
    severity: d.severity,
    source: d.source,
    message: d.message,
    enabled: d.enabled,
    condition: parse("The condition", d.condition) as Record<string, unknown>,
    routes: parse("The routes", d.routes || "[]") as Record<string, unknown>[],
    active: parse("The active windows", d.active || "[]") as Record<string, unknown>[],
    escalation: d.escalation.trim() ? (parse("The escalation", d.escalation) as Record<string, unknown>) : null,
    interval_seconds: d.interval_seconds ? Number(d.interval_seconds) : null,
    cooldown_seconds: Number(d.cooldown_seconds || 0),
  };
}

/** Create or edit an alert rule, with the preview ("would have fired N times in the last 24 h"). */
export default function AlertRuleForm() {
  const { id } = useParams();
  const { can } = useAuth();
  const navigate = useNavigate();
  const queryClient = useQueryClient();
  const [draft, setDraft] = useState<Draft>(NEW);
  const existing = useQuery({
    queryKey: ["alerts", "rule", id],
    enabled: Boolean(id),
    queryFn: () => unwrap(api.GET("/api/v1/alerts/rules/{rule_id}", { params: { path: { rule_id: id ?? "" } } })),
  });
  useEffect(() => {
    if (existing.data) setDraft(fromRule(existing.data));
  }, [existing.data]);
  const preview = useMutation({ mutationFn: () => unwrap(api.POST("/api/v1/alerts/rules/preview", { body: body(draft) })) });
  const save = useMutation({
    mutationFn: () =>
      id
        ? unwrap(api.PATCH("/api/v1/alerts/rules/{rule_id}", { params: { path: { rule_id: id } }, body: body(draft) }))
        : unwrap(api.POST("/api/v1/alerts/rules", { body: body(draft) })),
    onSuccess: () => {
      void queryClient.invalidateQueries({ queryKey: ["alerts"] });
      navigate("/alerts/rules");
    },
  });
  const reset = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/alerts/rules/{rule_id}/reset", { params: { path: { rule_id: id ?? "" } } })),
    onSuccess: (rule) => {
      void queryClient.invalidateQueries({ queryKey: ["alerts"] });
      setDraft(fromRule(rule));
    },
  });
  const remove = useMutation({
    mutationFn: () => unwrap(api.DELETE("/api/v1/alerts/rules/{rule_id}", { params: { path: { rule_id: id ?? "" } } })),
    onSuccess: () => {
      void queryClient.invalidateQueries({ queryKey: ["alerts"] });
      navigate("/alerts/rules");
    },
  });
  if (id && existing.isPending) return <Loading />;
  const rule = reset.data ?? existing.data;
  const writable = can("alerts:write");
  const change = (k: keyof Draft) => (e: { target: { value: string } }) => setDraft({ ...draft, [k]: e.target.value });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    save.mutate();
  };
  return (
    <>
      <PageHeader title={id ? `Alert rule ${existing.data?.name ?? ""}` : "Create alert rule"}>
        {rule?.origin === "module" && !rule.detached && writable ? (
          <ConfirmButton
            label="Reset to module default"
            question={`Put this rule back to what module ${rule.module_name} ships? Your changes to it are lost.`}
            onConfirm={() => reset.mutate()}
          />
        ) : null}
        {id && writable ? <ConfirmButton label="Delete" question="Delete this rule? Its open incidents stay." danger onConfirm={() => remove.mutate()} /> : null}
      </PageHeader>
      {rule?.origin === "module" ? (
        <p className="muted">
          <OriginBadges rule={rule} /> Shipped by module {rule.module_name} as “{rule.module_rule}”. A change marks it modified: upgrades of the module then leave
          it alone. A deleted rule comes back when the module is enabled or upgraded: disable it instead.
          {rule.paused_reason ? ` Not evaluated now: ${rule.paused_reason}.` : ""}
        </p>
      ) : null}
      <ErrorBox error={existing.error ?? remove.error ?? reset.error} />
      <form className="form" onSubmit={submit}>
        <Field label="Name">
          <input required maxLength={200} value={draft.name} onChange={change("name")} />
        </Field>
        <Field label="Severity">
          <select value={draft.severity} onChange={change("severity")}>
            <option value="critical">critical</option>
            <option value="warning">warning</option>
            <option value="info">info</option>
          </select>
        </Field>
        <Field label="Source">
          <select
            value={draft.source}
            onChange={(e) => {
              const source = e.target.value as Source;
              setDraft({ ...draft, source, condition: JSON.stringify(EXAMPLES[source].condition, null, 2), message: EXAMPLES[source].message });
            }}
          >
            <option value="series">a series (threshold per label set)</option>
            <option value="event">events (pattern and payload conditions)</option>
            <option value="job">job outcomes (failures in a row, not succeeded for)</option>
          </select>
        </Field>
        <Field label="Condition (JSON)">
          <textarea className="code" rows={8} value={draft.condition} onChange={change("condition")} spellCheck={false} />
        </Field>
        <Field label="Message ({{path}} placeholders)">
          <input value={draft.message} onChange={change("message")} />
        </Field>
        <Field label="Routes (JSON): channels per severity and transition">
          <textarea className="code" rows={4} value={draft.routes} onChange={change("routes")} spellCheck={false} />
        </Field>
        <Field label="Active windows (JSON; [] = always)">
          <textarea className="code" rows={3} value={draft.active} onChange={change("active")} spellCheck={false} />
        </Field>
        <Field label="Escalation (JSON; empty = none)">
          <textarea className="code" rows={3} value={draft.escalation} onChange={change("escalation")} spellCheck={false} placeholder='{"after_minutes": 15, "severity": "critical", "channels": ["pager"]}' />
        </Field>
        <Field label="Evaluate every (seconds; series and job rules)">
          <input type="number" min={1} value={draft.interval_seconds} onChange={change("interval_seconds")} placeholder="60" />
        </Field>
        <Field label="Cooldown (seconds)">
          <input type="number" min={0} value={draft.cooldown_seconds} onChange={change("cooldown_seconds")} />
        </Field>
        <label className="check">
          <input type="checkbox" checked={draft.enabled} onChange={(e) => setDraft({ ...draft, enabled: e.target.checked })} /> Enabled
        </label>
        <div className="actions">
          <button type="button" disabled={preview.isPending} onClick={() => preview.mutate()}>
            Preview
          </button>
          {writable ? (
            <button type="submit" className="primary" disabled={save.isPending}>
              {id ? "Save" : "Create"}
            </button>
          ) : null}
        </div>
        <ErrorBox error={preview.error ?? save.error} />
      </form>
      {preview.data ? (
        <Card title="Preview">
          <p data-testid="preview">
            Would have fired <strong>{preview.data.fired}</strong> {preview.data.fired === 1 ? "time" : "times"} in the last 24 h
            <span className="muted"> ({preview.data.evaluations} evaluations over {preview.data.groups} label sets)</span>
          </p>
          {preview.data.note ? <p className="muted">{preview.data.note}</p> : null}
          {preview.data.first.length ? (
            <ul>
              {preview.data.first.map((f, n) => (
                <li key={n}>
                  {String(f.at)} · {JSON.stringify(f.labels)} · {f.value == null ? "—" : String(f.value)}
                </li>
              ))}
            </ul>
          ) : null}
        </Card>
      ) : null}
    </>
  );
}
