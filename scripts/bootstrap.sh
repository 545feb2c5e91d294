#!/usr/bin/env bash
# Create .venv and install autoplat (editable) with its dependencies when pyproject.toml changed.
# Usage: scripts/bootstrap.sh [runtime|dev]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
extra="${1:-runtime}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "autoplat needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv (first run)..."
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
fi
stamp=".venv/.autoplat-$extra"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing autoplat ($extra dependencies)..."
  if [ "$extra" = "dev" ]; then spec=".[dev]"; else spec="."; fi
  .venv/bin/python -m pip install -q -e "$spec" 2>&1 | grep -v -E "^(WARNING: Location|  )" || true
  .venv/bin/python -c "import autoplat, api, registry, workflows, activities" >/dev/null
  echo "$want" > "$stamp"
fi
