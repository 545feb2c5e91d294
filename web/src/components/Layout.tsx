import { useQuery } from "@tanstack/react-query";
import { useState, type ReactNode } from "react";
import { Link, NavLink } from "react-router";
import { api, unwrap } from "../api/client";
import { useAuth } from "../auth";
import { saveTheme, storedTheme, type ThemeChoice } from "../theme";

const LINKS: { to: string; label: string; permission: string }[] = [
  { to: "/", label: "Dashboard", permission: "executions:read" },
  { to: "/modules", label: "Modules", permission: "modules:read" },
  { to: "/jobs", label: "Jobs", permission: "jobs:read" },
  { to: "/executions", label: "Executions", permission: "executions:read" },
  { to: "/events", label: "Events", permission: "events:read" },
  { to: "/alerts", label: "Alerts", permission: "alerts:read" },
  { to: "/status", label: "Health", permission: "executions:read" },
  { to: "/admin", label: "Admin", permission: "users:read" },
];

export function Layout({ children }: { children: ReactNode }) {
  const { me, can } = useAuth();
  return (
    <div className="shell">
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <NavLink to="/" className="brand" aria-label="autoplat home">
          <img src="/favicon.svg" alt="" width="24" height="24" />
          <span>autoplat</span>
        </NavLink>
        <nav aria-label="Main" className="mainnav">
          {LINKS.filter((l) => can(l.permission)).map((l) => (
            <NavLink key={l.to} to={l.to} end={l.to === "/"}>
              {l.label}
            </NavLink>
          ))}
          {can("modules:read") ? <ModuleLinks /> : null}
        </nav>
        {me ? <UserMenu /> : null}
      </header>
      {can("alerts:read") ? <CriticalBanner /> : null}
      <main id="main" tabIndex={-1}>
        {children}
      </main>
    </div>
  );
}

/** Modules with console pages (their manifest's ui section), after the platform's own links. */
function ModuleLinks() {
  const pages = useQuery({ queryKey: ["ui", "pages"], queryFn: () => unwrap(api.GET("/api/v1/ui/pages")), staleTime: 30_000 });
  return (
    <>
      {(pages.data?.modules ?? []).map((m) => (
        <NavLink key={m.module} to={`/m/${encodeURIComponent(m.module)}`} className="nav-module">
          {m.display_name}
        </NavLink>
      ))}
    </>
  );
}

/** A firing critical incident is visible from every page (docs/alerting.md). */
function CriticalBanner() {
  const firing = useQuery({
    queryKey: ["alerts", "incidents", "critical-banner"],
    queryFn: () =>
      unwrap(api.GET("/api/v1/alerts/incidents", { params: { query: { status: ["firing"], severity: ["critical"], limit: 1 } } })),
    refetchInterval: 10_000,
  });
  const total = firing.data?.total ?? 0;
  const first = firing.data?.items[0];
  if (!total || !first) return null;
  return (
    <div className="banner banner-critical" role="alert">
      <strong>{total === 1 ? "A critical incident is firing:" : `${total} critical incidents are firing:`}</strong>{" "}
      <Link to={`/alerts/incidents/${first.id}`}>{first.title}</Link>
      {total > 1 ? (
        <>
          {" · "}
          <Link to="/alerts?status=firing&severity=critical">all of them</Link>
        </>
      ) : null}
    </div>
  );
}

function UserMenu() {
  const { me, logout } = useAuth();
  const [theme, setTheme] = useState<ThemeChoice>(storedTheme());
  if (!me) return null;
  return (
    <details className="usermenu">
      <summary title="User menu">
        <span className="avatar" aria-hidden="true">
          {(me.full_name || me.username || me.email).slice(0, 1).toUpperCase()}
        </span>
        <span className="usermenu-name">{me.username ?? me.email}</span>
        <span className="badge">{me.role}</span>
      </summary>
      <div className="usermenu-panel">
        <p>
          <strong>{me.full_name || me.username || me.email}</strong>
          <br />
          <span className="muted">{me.email}</span>
          <br />
          Role: <span data-testid="role">{me.role}</span>
        </p>
        <label htmlFor="theme-select">Theme</label>
        <select
          id="theme-select"
          value={theme}
          onChange={(e) => {
            const v = e.target.value as ThemeChoice;
            setTheme(v);
            saveTheme(v);
          }}
        >
          <option value="system">System</option>
          <option value="light">Light</option>
          <option value="dark">Dark</option>
        </select>
        <button type="button" onClick={() => void logout()}>
          Sign out
        </button>
      </div>
    </details>
  );
}
