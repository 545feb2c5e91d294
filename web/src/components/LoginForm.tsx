import { useEffect, useRef, useState, type FormEvent } from "react";
import { useAuth } from "../auth";
import { ErrorBox } from "./ui";

export function LoginForm({ idPrefix = "login" }: { idPrefix?: string }) {
  const { login } = useAuth();
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await login(name, password);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <form onSubmit={submit} className="stack">
      <label htmlFor={`${idPrefix}-name`}>Email or username</label>
      <input
        id={`${idPrefix}-name`}
        name="login"
        autoComplete="username"
        required
        value={name}
        onChange={(e) => setName(e.target.value)}
      />
      <label htmlFor={`${idPrefix}-password`}>Password</label>
      <input
        id={`${idPrefix}-password`}
        name="password"
        type="password"
        autoComplete="current-password"
        required
        value={password}
        onChange={(e) => setPassword(e.target.value)}
      />
      <ErrorBox error={error} />
      <button type="submit" className="primary" disabled={busy}>
        {busy ? "Signing in…" : "Sign in"}
      </button>
    </form>
  );
}

/** Shown over the page when the session ends: signing in again keeps the page and its open forms. */
export function LoginDialog() {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
  }, []);
  return (
    <dialog ref={ref} className="login-dialog" aria-labelledby="expired-title" onCancel={(e) => e.preventDefault()}>
      <h2 id="expired-title">Your session has expired</h2>
      <p className="muted">Sign in again to continue where you were. Nothing on this page is lost.</p>
      <LoginForm idPrefix="relogin" />
    </dialog>
  );
}
