import { lazy, Suspense, useEffect, useRef } from "react";
import { Navigate, Route, Routes, useLocation } from "react-router";
import { useAuth } from "./auth";
import { Layout } from "./components/Layout";
import { LoginDialog } from "./components/LoginForm";
import { Loading } from "./components/ui";
import { LoginPage } from "./pages/Login";

// Every page is its own chunk: the first load carries the shell and the login only.
const Dashboard = lazy(() => import("./pages/Dashboard"));
const Modules = lazy(() => import("./pages/Modules"));
const ModuleDetail = lazy(() => import("./pages/ModuleDetail"));
const Jobs = lazy(() => import("./pages/Jobs"));
const JobForm = lazy(() => import("./pages/JobForm"));
const JobDetail = lazy(() => import("./pages/JobDetail"));
const Executions = lazy(() => import("./pages/Executions"));
const ExecutionDetail = lazy(() => import("./pages/ExecutionDetail"));
const Events = lazy(() => import("./pages/Events"));
const Admin = lazy(() => import("./pages/Admin"));

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
  if (status === "loading") return <Loading what="Starting" />;
  if (status === "anonymous") {
    if (location.pathname === "/login") return <LoginPage />;
    const next = location.pathname + location.search;
    return <Navigate to={`/login?next=${encodeURIComponent(next)}`} replace />;
  }
  return (
    <Layout>
      <FocusMainOnNavigate />
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
          <Route path="*" element={<NotFoundPage />} />
        </Routes>
      </Suspense>
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
