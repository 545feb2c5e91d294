// Cron with presets, an IANA timezone picker and the next runs previewed by the API.
import { useQuery } from "@tanstack/react-query";
import { api, unwrap } from "../api/client";
import { ErrorBox, useDebounced, Field } from "./ui";

export const CRON_PRESETS: { label: string; cron: string }[] = [
  { label: "Every minute", cron: "* * * * *" },
  { label: "Every 5 minutes", cron: "*/5 * * * *" },
  { label: "Every 15 minutes", cron: "*/15 * * * *" },
  { label: "Hourly", cron: "0 * * * *" },
  { label: "Daily at midnight", cron: "0 0 * * *" },
  { label: "Weekdays at 09:00", cron: "0 9 * * 1-5" },
  { label: "Weekly, Monday 06:00", cron: "0 6 * * 1" },
  { label: "Monthly, 1st at 00:00", cron: "0 0 1 * *" },
];

function timezones(): string[] {
  const intl = Intl as unknown as { supportedValuesOf?: (k: string) => string[] };
  const zones = intl.supportedValuesOf?.("timeZone") ?? [];
  return ["UTC", ...zones.filter((z) => z !== "UTC")];
}
const ZONES = timezones();

export function ScheduleField({
  cron,
  timezone,
  onChange,
  error,
}: {
  cron: string;
  timezone: string;
  onChange(cron: string, timezone: string): void;
  error?: string;
}) {
  const preset = CRON_PRESETS.find((p) => p.cron === cron.trim())?.cron ?? (cron.trim() ? "custom" : "");
  const debounced = useDebounced(`${cron.trim()}|${timezone}`, 250);
  const [qCron, qZone] = debounced.split("|");
  const preview = useQuery({
    queryKey: ["schedule-preview", qCron, qZone],
    queryFn: () => unwrap(api.GET("/api/v1/schedule-preview", { params: { query: { cron: qCron, timezone: qZone, count: 5 } } })),
    enabled: qCron.length > 0,
    retry: false,
  });
  return (
    <fieldset className="schedule">
      <legend>Schedule</legend>
      <div className="row">
        <Field label="Preset">
          <select value={preset} onChange={(e) => e.target.value !== "custom" && onChange(e.target.value, timezone)}>
            <option value="">No schedule (run on demand or on events)</option>
            {CRON_PRESETS.map((p) => (
              <option key={p.cron} value={p.cron}>
                {p.label}
              </option>
            ))}
            <option value="custom">Custom</option>
          </select>
        </Field>
        <Field label="Cron expression">
          <input
            name="schedule"
            value={cron}
            onChange={(e) => onChange(e.target.value, timezone)}
            placeholder="min hour day month weekday"
            spellCheck={false}
            aria-invalid={error ? true : undefined}
          />
        </Field>
        <Field label="Timezone">
          <select name="timezone" value={timezone} onChange={(e) => onChange(cron, e.target.value)}>
            {(ZONES.includes(timezone) ? ZONES : [timezone, ...ZONES]).map((z) => (
              <option key={z} value={z}>
                {z}
              </option>
            ))}
          </select>
        </Field>
      </div>
      {error ? <p className="field-error">{error}</p> : null}
      {cron.trim() ? (
        <div className="preview" aria-live="polite">
          <ErrorBox error={preview.error} />
          {preview.data ? (
            <>
              <span className="muted">Next runs ({preview.data.timezone}):</span>
              <ol className="next-runs">
                {preview.data.next_runs.map((r) => (
                  <li key={r}>{formatIn(r, preview.data.timezone)}</li>
                ))}
              </ol>
            </>
          ) : null}
        </div>
      ) : null}
    </fieldset>
  );
}

function formatIn(iso: string, zone: string): string {
  try {
    return new Date(iso).toLocaleString(undefined, { timeZone: zone, dateStyle: "medium", timeStyle: "short" });
  } catch {
    return iso;
  }
}
