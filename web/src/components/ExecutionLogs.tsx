// An execution's log: streamed live over SSE while the run is open, stored lines once it closed.
// Log text is module output: rendered as text only.
import { useEffect, useRef, useState } from "react";
import { readSse } from "../api/sse";
import { errorMessage } from "../api/client";

export interface LogEntry {
  ts?: string;
  level?: string;
  message?: string;
  step?: string;
  [key: string]: unknown;
}

export function ExecutionLogs({
  executionId,
  live,
  stored,
  onEnd,
}: {
  executionId: string;
  live: boolean;
  stored: LogEntry[];
  onEnd(): void;
}) {
  const [streamed, setStreamed] = useState<LogEntry[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [follow, setFollow] = useState(true);
  const box = useRef<HTMLDivElement>(null);
  const endRef = useRef(onEnd);
  endRef.current = onEnd;

  useEffect(() => {
    if (!live) return;
    const ctrl = new AbortController();
    let retry: ReturnType<typeof setTimeout> | undefined;
    let ended = false;
    setStreamed([]);
    setError(null);
    // Each connection sends the stored lines first, then live ones: a dropped stream reconnects and
    // starts over, so no line is missed.
    const connect = (): void => {
      const lines: LogEntry[] = [];
      readSse(
        `/api/v1/executions/${encodeURIComponent(executionId)}/logs/stream`,
        (m) => {
          if (m.event === "log") {
            try {
              lines.push(JSON.parse(m.data) as LogEntry);
            } catch {
              lines.push({ message: m.data });
            }
            setStreamed([...lines]);
            setError(null);
          } else if (m.event === "end") {
            ended = true;
            endRef.current();
          }
        },
        ctrl.signal,
      )
        .then(() => {
          if (!ended && !ctrl.signal.aborted) retry = setTimeout(connect, 2_000);
        })
        .catch((e) => {
          if (ctrl.signal.aborted) return;
          setError(errorMessage(e));
          retry = setTimeout(connect, 5_000);
        });
    };
    connect();
    return () => {
      ctrl.abort();
      clearTimeout(retry);
    };
  }, [executionId, live]);

  const entries = streamed && streamed.length >= stored.length ? streamed : stored;
  useEffect(() => {
    if (follow && box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [entries, follow]);

  return (
    <div>
      <div className="log-toolbar">
        {live ? <span className="live-dot">Streaming</span> : <span className="muted">{entries.length} lines</span>}
        <label className="check">
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} /> Follow
        </label>
      </div>
      {error ? (
        <p className="error" role="alert">
          Live log interrupted ({error}); reconnecting…
        </p>
      ) : null}
      <div className="logs" ref={box} role="log" aria-label="Execution log" tabIndex={0} data-testid="logs">
        {entries.length === 0 ? <div className="muted">No log lines yet.</div> : null}
        {entries.map((e, i) => (
          <div key={i} className={`logline level-${(e.level ?? "INFO").toLowerCase()}`}>
            <span className="ts">{e.ts ? new Date(e.ts).toLocaleTimeString() : ""}</span>
            <span className="lvl">{e.level ?? "INFO"}</span>
            {e.step ? <span className="step">{e.step}</span> : null}
            <span className="msg">{String(e.message ?? "")}</span>
          </div>
        ))}
      </div>
    </div>
  );
}
