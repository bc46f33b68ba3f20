#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with graft and its dependencies, then the
# offline assets (pretrained weights, datasets) into a cache outside the repository
# (~/.cache/graft, or $GRAFT_CACHE). The second run takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: graft needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi

quiet_pip() {
  # pip warns about every missing local index directory on this kind of machine: noise.
  "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the dependency list or the lock changed. Every version comes from
# constraints.txt (the tested environment; `make lock` refreshes it), so every machine installs
# the same; pyproject.toml keeps ranges, since graft is also a library.
stamp=".venv/.graft-deps-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing graft and its dependencies into .venv (about 2 minutes the first time)"
  quiet_pip .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  rm -f .venv/.graft-deps-*
  touch "$stamp"
fi

quiet_pip .venv/bin/python -m graft.assets fetch
