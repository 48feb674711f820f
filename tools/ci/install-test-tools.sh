#!/usr/bin/env bash
# Installs, from Debian's packages, every system tool a test needs beyond Rust and PostgreSQL
# (the list in localpg::system_tool; keep the two in step). Without them those tests skip, and
# with CI set they fail.
set -euo pipefail
# program:package
TOOLS=(pgbouncer:pgbouncer patroni:patroni etcd:etcd-server haproxy:haproxy pgbackrest:pgbackrest)
missing=()
for entry in "${TOOLS[@]}"; do
    program=${entry%%:*} package=${entry#*:}
    if ! command -v "$program" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$program" ]; then
        missing+=("$package")
    fi
done
# Patroni's etcd client (its etcd3 module imports python-etcd): the patroni package depends on it
# or on another store's client, so ask for it by name. Checked on the Python Patroni runs on.
if ! /usr/bin/python3 -c 'import etcd' >/dev/null 2>&1; then
    missing+=(python3-etcd)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
# Debian's pgbouncer package starts a system pgbouncer on 6432; the tests' own listen on free ports.
# etcd-server, haproxy and patroni start system services on install where systemd runs (etcd on
# 2379/2380): the drill starts its own on free ports, so stop those and keep them off.
if [ -d /run/systemd/system ]; then
    for service in etcd haproxy patroni; do
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    done
fi
