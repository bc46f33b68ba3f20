#!/usr/bin/env bash
# System tools that some tests drive for real: headless Chromium (the report opens in a real
# browser) and a PostgreSQL server (a search study shared by workers). Debian packages, installed
# only when missing; a machine where they cannot be installed skips those tests, except in CI
# (CI=true), where the tests fail instead so that a missing tool cannot pass unnoticed.
set -uo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
echo "installing test tools: ${missing[*]}"
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null; }; then
  echo "warning: could not install ${missing[*]}; the tests that need them will skip" >&2
fi
exit 0
