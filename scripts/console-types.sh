#!/usr/bin/env bash
# Regenerate the console's typed API client from the platform's own OpenAPI document:
#   web/src/api/openapi.json  (what create_app(...).openapi() answers, no server needed)
#   web/src/api/schema.d.ts   (openapi-typescript's types of it, used by openapi-fetch)
# Both are checked in; tests/console/test_types_drift.py fails when they no longer match the API.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
python=".venv/bin/python"
[ -x "$python" ] || python="python3"
[ -d web/node_modules ] || npm --prefix web ci --no-audit --no-fund
PYTHONPATH="$here" "$python" scripts/console_openapi.py > web/src/api/openapi.json
(cd web && node_modules/.bin/openapi-typescript src/api/openapi.json -o src/api/schema.d.ts --alphabetize >/dev/null)
echo "regenerated web/src/api/openapi.json and web/src/api/schema.d.ts"
