#!/usr/bin/env bash
# Proves the fallback of localpg::system_tool: the tests that need a system tool run with every
# such tool hidden (TEST_HIDE_TOOLS) and CI unset, pass, and say each one that they skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
HIDDEN=pgbouncer,patroni,etcd,haproxy,pgbackrest
# The tests that need one of them: name = cargo test arguments.
declare -A SUITES=(
    [pgbouncer]="-p faults --test pgbouncer"
    [outage-behind-pgbouncer]="-p faults --test outage outage_behind_pgbouncer"
    [failover]="-p faults --test failover"
    [restore]="-p faults --test restore"
)
EXPECTED=8
log=$(mktemp)
for name in "${!SUITES[@]}"; do
    one=$(mktemp)
    # shellcheck disable=SC2086
    if ! env -u CI TEST_HIDE_TOOLS=$HIDDEN cargo test --locked ${SUITES[$name]} >"$one" 2>&1; then
        cat "$one"; echo "$name failed with its tools hidden"; exit 1
    fi
    grep -oE '(skipped .*|test result.*)' "$one" || true
    cat "$one" >>"$log"; rm -f "$one"
done
skipped=$(grep -c 'skipped .*not found (TEST_HIDE_TOOLS=' "$log" || true)
rm -f "$log"
if [ "$skipped" -ne "$EXPECTED" ]; then
    echo "expected $EXPECTED skip lines, saw $skipped"
    exit 1
fi
echo "$skipped tests skipped with their tools hidden, each naming the tool"
