import { useQueryClient } from "@tanstack/react-query";
import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import {
  api,
  ApiError,
  authFetch,
  clearTokens,
  onSessionExpired,
  refreshBody,
  rememberSignedIn,
  restoreSession,
  setTokens,
  toApiError,
  unwrap,
  type Schemas,
} from "./api/client";

export type Me = Schemas["UserRead"];
type Status = "loading" | "anonymous" | "ready";

interface Auth {
  status: Status;
  me: Me | null;
  /** The session ended under an open page: a login dialog covers it, the page stays as it was. */
  expired: boolean;
  login(login: string, password: string): Promise<void>;
  logout(): Promise<void>;
  can(permission: string): boolean;
}

const AuthContext = createContext<Auth | null>(null);

export function hasPermission(me: Me | null, needed: string): boolean {
  if (!me) return false;
  const [resource, action] = needed.split(":");
  return (me.permissions ?? []).some((granted) => {
    const [r, a] = granted.split(":");
    return (r === "*" || r === resource) && (a === "*" || a === action);
  });
}

async function postLogin(login: string, password: string): Promise<Response> {
  const send = (body: object) =>
    fetch("/api/v1/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
  const res = await send({ login, password, session_cookie: true });
  // An API without the session cookie refuses the unknown field: log in the older way.
  if (res.status === 422) {
    const body = await res.clone().json().catch(() => undefined);
    if (JSON.stringify(body ?? "").includes("session_cookie")) return send({ login, password });
  }
  return res;
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const queryClient = useQueryClient();
  const [status, setStatus] = useState<Status>("loading");
  const [me, setMe] = useState<Me | null>(null);
  const [expired, setExpired] = useState(false);

  const loadMe = useCallback(async () => {
    const user = await unwrap(api.GET("/api/v1/auth/me"));
    setMe(user);
    setStatus("ready");
  }, []);

  useEffect(() => {
    let live = true;
    (async () => {
      try {
        if (await restoreSession()) {
          await loadMe();
          return;
        }
      } catch {
        /* no session: the login page */
      }
      if (live) setStatus("anonymous");
    })();
    const off = onSessionExpired(() => setExpired(true));
    return () => {
      live = false;
      off();
    };
  }, [loadMe]);

  const login = useCallback(
    async (loginName: string, password: string) => {
      const res = await postLogin(loginName, password);
      const body = await res.json().catch(() => undefined);
      if (!res.ok) throw toApiError(res, body);
      setTokens(body);
      rememberSignedIn(true);
      await loadMe();
      if (expired) {
        setExpired(false);
        await queryClient.invalidateQueries();
      }
    },
    [loadMe, expired, queryClient],
  );

  const logout = useCallback(async () => {
    try {
      await authFetch(
        new Request("/api/v1/auth/logout", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(refreshBody()),
          credentials: "same-origin",
        }),
      );
    } finally {
      clearTokens();
      rememberSignedIn(false);
      queryClient.clear();
      setMe(null);
      setExpired(false);
      setStatus("anonymous");
    }
  }, [queryClient]);

  const value = useMemo<Auth>(
    () => ({ status, me, expired, login, logout, can: (p: string) => hasPermission(me, p) }),
    [status, me, expired, login, logout],
  );
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): Auth {
  const auth = useContext(AuthContext);
  if (!auth) throw new Error("useAuth outside AuthProvider");
  return auth;
}

export { ApiError };
