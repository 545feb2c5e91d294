#!/usr/bin/env bash
# Create .venv and install autoplat (editable) with its dependencies when pyproject.toml changed,
# saying what it does as it goes (one line per package; pip's full output in .venv/pip-install.log).
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
started=$SECONDS
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv (first run)..."
  "$python" -m venv .venv
  echo "  upgrading pip..."
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -E "^WARNING: Location" || true
fi
stamp=".venv/.autoplat-$extra"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing autoplat and its dependencies ($extra; about a minute the first time)..."
  if [ "$extra" = "dev" ]; then spec=".[dev]"; else spec="."; fi
  log=".venv/pip-install.log"
  # One line per package pip resolves, then the install step: progress without pip's noise.
  if ! .venv/bin/python -m pip install --progress-bar off -e "$spec" 2>&1 | tee "$log" | awk '
      /^Collecting / { n++; printf "  [%d] %s\n", n, $2; fflush(); next }
      /^Installing collected packages/ { printf "  installing %d package(s)...\n", n; fflush(); next }'; then
    echo "pip failed; its output (last lines of $log):" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  .venv/bin/python -c "import autoplat, api, registry, workflows, activities" >/dev/null
  echo "$want" > "$stamp"
  echo "  installed in $((SECONDS - started)) s"
fi
