import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link } from "react-router";
import { api, unwrap } from "../api/client";
import { ErrorBox, Loading } from "./ui";

/** The most recent slots drawn (a minutely job has 1,440 a day). */
const SHOWN = 288;
const WINDOWS = { "6 hours": 6, "24 hours": 24, "7 days": 24 * 7 } as const;
type WindowName = keyof typeof WINDOWS;

/** The slot ledger of a scheduled job: one mark per nominal fire time, coloured by outcome
 * (docs/schedules.md), and the schedule's pause / resume. */
export function SlotTimeline({ jobId, paused, pauseNote, canWrite }: { jobId: string; paused: boolean; pauseNote?: string | null; canWrite: boolean }) {
  const qc = useQueryClient();
  const [window, setWindow] = useState<WindowName>("24 hours");
  const [note, setNote] = useState("");
  const slots = useQuery({
    queryKey: ["jobs", "slots", jobId, window],
    queryFn: () => {
      const from = new Date(Date.now() - WINDOWS[window] * 3600_000).toISOString();
      return unwrap(api.GET("/api/v1/jobs/{job_id}/slots", { params: { path: { job_id: jobId }, query: { from } } }));
    },
    refetchInterval: 15_000,
  });
  const path = { params: { path: { job_id: jobId } } };
  const pause = useMutation({
    mutationFn: (on: boolean) =>
      unwrap(on ? api.POST("/api/v1/jobs/{job_id}/pause", { ...path, body: { note } }) : api.POST("/api/v1/jobs/{job_id}/resume", { ...path, body: { note: "" } })),
    onSuccess: () => {
      setNote("");
      void qc.invalidateQueries({ queryKey: ["jobs"] });
    },
  });
  const items = slots.data?.items ?? [];
  const shown = items.slice(-SHOWN);
  const counts: Record<string, number> = {};
  for (const s of items) counts[s.outcome] = (counts[s.outcome] ?? 0) + 1;
  return (
    <>
      <ErrorBox error={slots.error ?? pause.error} />
      <div className="slot-controls">
        <label htmlFor="slot-window">Window</label>
        <select id="slot-window" value={window} onChange={(e) => setWindow(e.target.value as WindowName)}>
          {Object.keys(WINDOWS).map((w) => (
            <option key={w}>{w}</option>
          ))}
        </select>
        <span className="muted">
          {["ran", "skipped", "missed", "pending"].map((o) => `${o} ${counts[o] ?? 0}`).join(" · ")}
          {slots.data ? ` — times in ${slots.data.timezone}, DST ${slots.data.dst.nonexistent} / ${slots.data.dst.ambiguous}` : ""}
        </span>
      </div>
      {slots.isPending ? (
        <Loading />
      ) : shown.length === 0 ? (
        <p className="muted">No fire time in this window.</p>
      ) : (
        <ol className="slots" aria-label="Fire times, oldest first">
          {shown.map((s) => {
            const label = `${s.wall_time ?? s.at}: ${s.outcome}${s.reason ? ` (${s.reason})` : ""}${s.trigger === "backfill" ? ", backfilled" : ""}${s.dst ? `; ${s.dst}` : ""}`;
            return (
              <li key={s.at}>
                {s.execution_id ? (
                  <Link to={`/executions/${s.execution_id}`} className={`slot slot-${s.outcome}`} title={label} aria-label={label} />
                ) : (
                  <span role="img" className={`slot slot-${s.outcome}`} title={label} aria-label={label} />
                )}
              </li>
            );
          })}
        </ol>
      )}
      {canWrite ? (
        paused ? (
          <p>
            Paused{pauseNote ? `: ${pauseNote}` : ""}.{" "}
            <button type="button" disabled={pause.isPending} onClick={() => pause.mutate(false)}>
              Resume schedule
            </button>
          </p>
        ) : (
          <details>
            <summary>Pause the schedule</summary>
            <label htmlFor="pause-note">Why (shown on the schedule and in the audit log)</label>
            <input id="pause-note" value={note} maxLength={2000} onChange={(e) => setNote(e.target.value)} />
            <button type="button" disabled={pause.isPending} onClick={() => pause.mutate(true)}>
              Pause schedule
            </button>
          </details>
        )
      ) : null}
    </>
  );
}
