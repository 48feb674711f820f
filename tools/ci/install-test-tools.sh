#!/usr/bin/env bash
# Installs, from Debian's packages, every system tool a test needs beyond Rust and PostgreSQL
# (the list in localpg::system_tool; keep the two in step). Without them those tests skip, and
# with CI set they fail.
set -euo pipefail
# program:package
TOOLS=(pgbouncer:pgbouncer)
missing=()
for entry in "${TOOLS[@]}"; do
    program=${entry%%:*} package=${entry#*:}
    if ! command -v "$program" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$program" ]; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
# Debian's pgbouncer package starts a system pgbouncer on 6432; the tests' own listen on free ports.
