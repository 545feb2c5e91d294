import { useQuery } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { api, errorMessage, fetchBlobUrl, unwrap, type Schemas } from "../api/client";
import { ErrorBox } from "./ui";

export function Artifacts({ executionId }: { executionId: string }) {
  const list = useQuery({
    queryKey: ["executions", "artifacts", executionId],
    queryFn: () => unwrap(api.GET("/api/v1/executions/{execution_id}/artifacts", { params: { path: { execution_id: executionId } } })),
  });
  if (list.error) return <ErrorBox error={list.error} />;
  if (!list.data) return null;
  if (list.data.items.length === 0) return <p className="muted">No artifacts.</p>;
  return (
    <ul className="artifacts">
      {list.data.items.map((a) => (
        <Artifact key={a.name} artifact={a} />
      ))}
    </ul>
  );
}

function Artifact({ artifact }: { artifact: Schemas["ArtifactRead"] }) {
  const isImage = artifact.content_type.startsWith("image/");
  const [preview, setPreview] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    if (!isImage) return;
    let url: string | null = null;
    fetchBlobUrl(artifact.url)
      .then((u) => setPreview((url = u)))
      .catch((e) => setError(errorMessage(e)));
    return () => {
      if (url) URL.revokeObjectURL(url);
    };
  }, [artifact.url, isImage]);
  async function download() {
    try {
      const url = await fetchBlobUrl(artifact.url);
      const a = document.createElement("a");
      a.href = url;
      a.download = artifact.name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      setError(errorMessage(e));
    }
  }
  return (
    <li>
      <div>
        <strong>{artifact.name}</strong> <span className="muted small">{artifact.content_type}, {Math.ceil(artifact.size / 1024)} KiB</span>{" "}
        <button type="button" onClick={() => void download()}>
          Download
        </button>
      </div>
      {preview ? <img src={preview} alt={`Artifact ${artifact.name}`} className="artifact-preview" /> : null}
      {error ? <p className="error">{error}</p> : null}
    </li>
  );
}
