// Server-sent events over fetch: EventSource cannot send the bearer token.
import { authFetch, toApiError } from "./client";

export interface SseMessage {
  event: string;
  data: string;
  id?: string;
}

/** Read ``url`` as an event stream, calling ``onMessage`` per event, until it ends or ``signal`` aborts. */
export async function readSse(
  url: string,
  onMessage: (m: SseMessage) => void,
  signal: AbortSignal,
  lastEventId?: string,
): Promise<void> {
  const headers: Record<string, string> = { Accept: "text/event-stream" };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const res = await authFetch(new Request(url, { headers, signal }));
  if (!res.ok || !res.body) throw toApiError(res, await res.json().catch(() => undefined));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data: string[] = [];
  let id: string | undefined;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl: number;
    while ((nl = buffer.search(/\r?\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer[nl] === "\r" ? 2 : 1));
      if (line === "") {
        if (data.length) onMessage({ event, data: data.join("\n"), id });
        event = "message";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const raw = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = raw;
      else if (field === "data") data.push(raw);
      else if (field === "id") id = raw;
    }
  }
}
