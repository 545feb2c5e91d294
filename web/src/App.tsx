import { lazy, Suspense, useEffect, useRef, useState, type ComponentType } from "react";
import { Navigate, Route, Routes, useLocation } from "react-router";
import { useAuth } from "./auth";
import { ErrorBoundary } from "./components/ErrorBoundary";
import { Layout } from "./components/Layout";
import { LoginDialog } from "./components/LoginForm";
import { Loading } from "./components/ui";
import { LoginPage } from "./pages/Login";

// Every page is its own chunk: the first load carries the shell and the login only. The current
// page's chunk is fetched while the session is restored, and the others once the app is idle, so a
// page never waits on Suspense (React holds a revealed fallback for 300 ms).
type Page = ComponentType & { preload(): Promise<unknown> };
function page(loader: () => Promise<{ default: ComponentType }>): Page {
  let loaded: ComponentType | undefined;
  let pending: Promise<unknown> | undefined;
  const preload = () => (pending ??= loader().then((m) => (loaded = m.default)));
  const Lazy = lazy(() => preload().then(() => ({ default: loaded! })));
  function Component() {
    // Chosen once per mount: switching from Lazy to the loaded page later would remount it (and lose its state).
    const [Chosen] = useState<ComponentType>(() => loaded ?? Lazy);
    return <Chosen />;
  }
  return Object.assign(Component, { preload });
}

const Dashboard = page(() => import("./pages/Dashboard"));
const Modules = page(() => import("./pages/Modules"));
const ModuleDetail = page(() => import("./pages/ModuleDetail"));
const Jobs = page(() => import("./pages/Jobs"));
const JobForm = page(() => import("./pages/JobForm"));
const JobDetail = page(() => import("./pages/JobDetail"));
const Executions = page(() => import("./pages/Executions"));
const ExecutionDetail = page(() => import("./pages/ExecutionDetail"));
const Events = page(() => import("./pages/Events"));
const Admin = page(() => import("./pages/Admin"));
const Incidents = page(() => import("./pages/Incidents"));
const IncidentDetail = page(() => import("./pages/IncidentDetail"));
const AlertRules = page(() => import("./pages/AlertRules"));
const AlertRuleForm = page(() => import("./pages/AlertRuleForm"));
const Health = page(() => import("./pages/Health"));
const ModulePage = page(() => import("./pages/ModulePage"));

const PAGES: [RegExp, Page][] = [
  [/^\/$/, Dashboard],
  [/^\/modules\/[^/]+/, ModuleDetail],
  [/^\/modules/, Modules],
  [/^\/jobs\/(new|[^/]+\/edit)/, JobForm],
  [/^\/jobs\/[^/]+/, JobDetail],
  [/^\/jobs/, Jobs],
  [/^\/executions\/[^/]+/, ExecutionDetail],
  [/^\/executions/, Executions],
  [/^\/events/, Events],
  [/^\/admin/, Admin],
  [/^\/alerts\/incidents\/[^/]+/, IncidentDetail],
  [/^\/alerts\/rules\/(new|[^/]+\/edit)/, AlertRuleForm],
  [/^\/alerts\/rules/, AlertRules],
  [/^\/alerts/, Incidents],
  [/^\/m\//, ModulePage],
];

/** Start fetching the chunk of the page at ``pathname`` (called before the session is restored). */
export function preloadPage(pathname: string): Promise<unknown> {
  return PAGES.find(([re]) => re.test(pathname))?.[1].preload() ?? Promise.resolve();
}

function preloadAllWhenIdle() {
  const all = () => PAGES.forEach(([, p]) => void p.preload());
  if ("requestIdleCallback" in window) requestIdleCallback(all, { timeout: 3000 });
  else setTimeout(all, 1000);
}

const TITLES: [RegExp, string][] = [
  [/^\/$/, "Dashboard"],
  [/^\/modules\/[^/]+/, "Module"],
  [/^\/modules/, "Modules"],
  [/^\/jobs\/new/, "Create job"],
  [/^\/jobs\/[^/]+/, "Job"],
  [/^\/jobs/, "Jobs"],
  [/^\/executions\/[^/]+/, "Execution"],
  [/^\/executions/, "Executions"],
  [/^\/events/, "Events"],
  [/^\/admin/, "Admin"],
  [/^\/alerts\/incidents\/[^/]+/, "Incident"],
  [/^\/alerts\/rules\/new/, "Create alert rule"],
  [/^\/alerts\/rules\/[^/]+/, "Alert rule"],
  [/^\/alerts\/rules/, "Alert rules"],
  [/^\/alerts/, "Incidents"],
  [/^\/m\//, "Module page"],
  [/^\/login/, "Sign in"],
];

function useDocumentTitle() {
  const { pathname } = useLocation();
  useEffect(() => {
    const title = TITLES.find(([re]) => re.test(pathname))?.[1] ?? "autoplat";
    document.title = `${title} · autoplat`;
  }, [pathname]);
}

function FocusMainOnNavigate() {
  const { pathname } = useLocation();
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    document.getElementById("main")?.focus({ preventScroll: true });
  }, [pathname]);
  return null;
}

export function App() {
  const { status, expired } = useAuth();
  const location = useLocation();
  useDocumentTitle();
  useEffect(() => {
    if (status === "ready") preloadAllWhenIdle();
  }, [status]);
  if (status === "loading") return <Loading what="Starting" />;
  if (status === "anonymous") {
    if (location.pathname === "/login") return <LoginPage />;
    const next = location.pathname + location.search;
    return <Navigate to={`/login?next=${encodeURIComponent(next)}`} replace />;
  }
  return (
    <Layout>
      <FocusMainOnNavigate />
      <ErrorBoundary resetKey={location.pathname}>
      <Suspense fallback={<Loading />}>
        <Routes>
          <Route path="/" element={<Dashboard />} />
          <Route path="/login" element={<LoginPage />} />
          <Route path="/modules" element={<Modules />} />
          <Route path="/modules/:name" element={<ModuleDetail />} />
          <Route path="/jobs" element={<Jobs />} />
          <Route path="/jobs/new" element={<JobForm />} />
          <Route path="/jobs/:id" element={<JobDetail />} />
          <Route path="/jobs/:id/edit" element={<JobForm />} />
          <Route path="/executions" element={<Executions />} />
          <Route path="/executions/:id" element={<ExecutionDetail />} />
          <Route path="/events" element={<Events />} />
          <Route path="/admin" element={<Admin />} />
          <Route path="/alerts" element={<Incidents />} />
          <Route path="/alerts/incidents/:id" element={<IncidentDetail />} />
          <Route path="/alerts/rules" element={<AlertRules />} />
          <Route path="/alerts/rules/new" element={<AlertRuleForm />} />
          <Route path="/alerts/rules/:id/edit" element={<AlertRuleForm />} />
          {/* /health is the API's own JSON: the console page lives at /status. */}
          <Route path="/status" element={<Health />} />
          {/* Pages modules declare in their manifest's ui section. */}
          <Route path="/m/:module" element={<ModulePage />} />
          <Route path="/m/:module/:page" element={<ModulePage />} />
          <Route path="*" element={<NotFoundPage />} />
        </Routes>
      </Suspense>
      </ErrorBoundary>
      {expired ? <LoginDialog /> : null}
    </Layout>
  );
}

function NotFoundPage() {
  return (
    <section>
      <h1>Not found</h1>
      <p>No page at this address.</p>
    </section>
  );
}
