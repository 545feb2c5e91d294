import { Link } from "react-router";
import type { Schemas } from "../api/client";
import { Duration, StatusBadge, Time } from "./ui";

export function ExecutionTable({ items, showJob = true }: { items: Schemas["ExecutionSummary"][]; showJob?: boolean }) {
  return (
    <div className="table-wrap">
      <table>
        <thead>
          <tr>
            <th scope="col">Run</th>
            <th scope="col">Status</th>
            {showJob ? <th scope="col">Job type</th> : null}
            <th scope="col">Trigger</th>
            <th scope="col">Started</th>
            <th scope="col">Duration</th>
          </tr>
        </thead>
        <tbody>
          {items.map((e) => (
            <tr key={e.id}>
              <td>
                <Link to={`/executions/${e.id}`}>
                  <code>{e.id.slice(0, 8)}</code>
                </Link>
              </td>
              <td>
                <StatusBadge status={e.status} />
              </td>
              {showJob ? (
                <td>
                  <code>
                    {e.module}.{e.job_type}
                  </code>
                </td>
              ) : null}
              <td>{e.trigger}</td>
              <td>
                <Time value={e.started_at ?? e.created_at} />
              </td>
              <td>
                <Duration ms={e.duration_ms} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
