import { Navigate, useSearchParams } from "react-router";
import { useAuth } from "../auth";
import { LoginForm } from "../components/LoginForm";

function safeNext(next: string | null): string {
  // Only paths of this console: never an absolute URL handed in by a link.
  return next && next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/login") ? next : "/";
}

export function LoginPage() {
  const { status } = useAuth();
  const [params] = useSearchParams();
  const next = safeNext(params.get("next"));
  if (status === "ready") return <Navigate to={next} replace />;
  return (
    <main className="login-page" id="main">
      <div className="login-box">
        <h1>
          <img src="/favicon.svg" alt="" width="28" height="28" /> autoplat
        </h1>
        <p className="muted">Sign in to the console.</p>
        <LoginForm />
      </div>
    </main>
  );
}
