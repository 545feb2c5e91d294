#!/usr/bin/env bash
# Build the web console (web/ -> api/console_dist/) when it is missing or its sources changed:
# npm ci + vite build, with a stamp of the sources' hash. Needs Node.js >= 20 and npm; as root on
# Debian it installs the nodejs package when Node is missing. Exit 1 with a clear message otherwise.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
out="api/console_dist"
stamp="$out/.stamp"
[ -f web/package.json ] || { echo "no web/ folder: using the console shipped in $out" >&2; exit 0; }

sources_hash() {
  find web -path web/node_modules -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
}
want="$(sources_hash)"
if [ -f "$out/index.html" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

node_ok() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'
}
if ! node_ok && ! command -v node >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian nodejs and npm to build the console..."
  (apt-get install -y -q nodejs npm >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null))
fi
if ! node_ok; then
  have="$(command -v node >/dev/null 2>&1 && node --version || echo none)"
  echo "The web console needs Node.js 20 or newer with npm to build (found: node $have, npm $(command -v npm >/dev/null 2>&1 && npm --version || echo none))." >&2
  echo "Install Node.js >= 20 (https://nodejs.org or your distribution), then run this again." >&2
  exit 1
fi

echo "building the web console (web/ -> $out)..."
if [ ! -f web/node_modules/.package-lock.json ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
  npm --prefix web ci --no-audit --no-fund --loglevel=error
fi
npm --prefix web run --silent build >/dev/null
echo "$want" > "$stamp"
echo "console built."
