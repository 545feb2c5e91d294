// The console's build: hashed files into ../api/console_dist (shipped in the wheel, served by the API),
// plus Swagger UI and ReDoc copied from npm so /docs and /redoc work offline.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig, type Plugin } from "vite";

const here = dirname(fileURLToPath(import.meta.url));
const outDir = resolve(here, "../api/console_dist");

const VENDOR: Record<string, string> = {
  "swagger-ui/swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
  "swagger-ui/swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
  "redoc/redoc.standalone.js": "redoc/bundles/redoc.standalone.js",
};

function vendorAssets(): Plugin {
  return {
    name: "autoplat-vendor-assets",
    apply: "build",
    closeBundle() {
      for (const [target, source] of Object.entries(VENDOR)) {
        const dest = resolve(outDir, "vendor", target);
        mkdirSync(dirname(dest), { recursive: true });
        let text = readFileSync(resolve(here, "node_modules", source), "utf8");
        // ReDoc's sidebar shows a logo fetched from its CDN: ours instead (nothing from the internet).
        text = text.replaceAll("https://cdn.redoc.ly/redoc/logo-mini.svg", "/favicon.svg");
        writeFileSync(dest, text);
      }
    },
  };
}

export default defineConfig({
  plugins: [react(), vendorAssets()],
  build: { outDir, emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 800 },
  server: { proxy: { "/api": "http://127.0.0.1:8000", "/docs": "http://127.0.0.1:8000" } },
});
