import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { BrowserRouter } from "react-router";
import { ApiError, restoreSession } from "./api/client";
import { App, preloadPage } from "./App";
import { AuthProvider } from "./auth";
import "./styles.css";
import { applyTheme, storedTheme, watchSystemTheme } from "./theme";

applyTheme(storedTheme());
// In parallel: the session from the refresh cookie, and the code of the page asked for.
void restoreSession();
if (location.pathname !== "/login") void preloadPage(location.pathname);
watchSystemTheme();

const queryClient = new QueryClient({
  defaultOptions: {
    queries: {
      staleTime: 2_000,
      refetchOnWindowFocus: true,
      // A refused or missing resource does not get better by asking again.
      retry: (count, error) => !(error instanceof ApiError && error.status < 500) && count < 2,
    },
  },
});

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <BrowserRouter>
        <AuthProvider>
          <App />
        </AuthProvider>
      </BrowserRouter>
    </QueryClientProvider>
  </StrictMode>,
);
