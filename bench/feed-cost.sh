#!/usr/bin/env bash
# PostgreSQL's CPU per task write without the change feed, with 0007's feed and with 0011's
# (issue #14: the feed may cost at most 1.3 times the write without it).
#
#   bench/feed-cost.sh [seconds per run, 20] [rounds, 3]
#
# Starts a private PostgreSQL (fsync off) under a temporary directory, as the postgres user when
# run as root. Per round, three fresh databases with 300 users and 6,000 tasks: (a) every
# migration up to 0010 with 0007's feed trigger disabled, (b) up to 0010, (c) all. Then pgbench
# (-M prepared -c 2 -j 2) runs CreateTask's INSERT, then UpdateTask's UPDATE, on the three at
# once. Prints, per round, the CPU (utime + stime from /proc) of each one's two backends per
# transaction, then the medians and the ratios (b)/(a) and (c)/(a).
set -euo pipefail
SECONDS_PER_RUN=${1:-20}
ROUNDS=${2:-3}
MIGRATIONS=$(cd "$(dirname "$0")/../migrations" && pwd)
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PORT=55434
DIR=$(mktemp -d /tmp/feed-cost.XXXXXX)
chmod 755 "$DIR"
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else sh -c "$*"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
as_pg "$BIN/initdb -D $DIR/data -A trust -U postgres" >/dev/null
printf "port = $PORT\nlisten_addresses = ''\nunix_socket_directories = '$DIR'\nfsync = off\nshared_buffers = 256MB\n" \
    >>"$DIR/data/postgresql.conf"
as_pg "$BIN/pg_ctl -D $DIR/data -l $DIR/log -w start" >/dev/null
trap 'as_pg "$BIN/pg_ctl -D $DIR/data -m immediate stop" >/dev/null; rm -rf "$DIR"' EXIT
PSQL="$BIN/psql -h $DIR -p $PORT -U postgres -XAtq -v ON_ERROR_STOP=1"
USER_ID="('00000000-0000-0000-0000-' || lpad(%s::text, 12, '0'))::uuid"

cat >"$DIR/insert.sql" <<EOF
\\set u random(1, 300)
INSERT INTO tasks (user_id, title, description)
SELECT x.u, 'Buy milk', '2 litres' FROM (SELECT $(printf "$USER_ID" :u) AS u) x
WHERE coalesce((SELECT seq FROM task_feeds WHERE user_id = x.u), 0) < 100000
   OR (SELECT count(*) FROM (SELECT 1 FROM tasks WHERE user_id = x.u LIMIT 100000) mine) < 100000
RETURNING id, user_id, title, description, completed, created_at, updated_at, xmin::text::bigint AS version;
EOF
cat >"$DIR/update.sql" <<EOF
\\set id random(1, 6000)
\\set c random(0, 1)
UPDATE tasks SET title = COALESCE('Buy oat milk', title), description = CASE WHEN false THEN NULL ELSE description END,
    completed = COALESCE(:c = 1, completed)
WHERE id = :id AND user_id = $(printf "$USER_ID" "((:id - 1) % 300 + 1)")
  AND (NULL::bigint IS NULL OR xmin::text::bigint = NULL::bigint)
RETURNING id, user_id, title, description, completed, created_at, updated_at, xmin::text::bigint AS version;
EOF

# database, last migration, SQL after the migrations
make_db() {
    $PSQL -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"
    for f in "$MIGRATIONS"/*.up.sql; do
        n=$(basename "$f" | cut -c1-14)
        [ "$n" -le "$2" ] && $PSQL -d "$1" -1 -f "$f"
    done
    $PSQL -d "$1" -c "INSERT INTO users (id, email, password_hash)
        SELECT $(printf "$USER_ID" n), 'u' || n || '@example.com', 'x' FROM generate_series(1, 300) n" \
        -c "INSERT INTO tasks (user_id, title, description)
        SELECT $(printf "$USER_ID" "((n - 1) % 300 + 1)"), 'Task ' || n, 'seeded' FROM generate_series(1, 6000) n" \
        ${3:+-c "$3"} -c "VACUUM ANALYZE"
}

# script, databases: runs pgbench on every database at the same time (so that each meets the same
# machine: other work on it inflates them alike), prints each one's backend CPU per transaction
cpu_per_tx() {
    python3 - "$DIR" "$PORT" "$SECONDS_PER_RUN" "$BIN" "$@" <<'EOF'
import os, re, subprocess, sys, time
sock, port, secs, bin, script, *dbs = sys.argv[1:]
postmaster = int(open(f"{sock}/data/postmaster.pid").readline())
def cpu(pid):  # utime + stime, in clock ticks
    s = open(f"/proc/{pid}/stat").read()
    f = s[s.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12])
benches = {db: subprocess.Popen([f"{bin}/pgbench", "-h", sock, "-p", port, "-U", "postgres", "-n", "-M", "prepared",
                                 "-f", script, "-c", "2", "-j", "2", "-T", secs, db], stdout=subprocess.PIPE, text=True)
           for db in dbs}
last = {db: {} for db in dbs}  # the backends' CPU, sampled until they exit
while any(b.poll() is None for b in benches.values()):
    for pid in subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True).stdout.split():
        try:
            command = open(f"/proc/{pid}/cmdline").read()
            for db in dbs:
                if f"postgres: postgres {db} [local]" in command:
                    last[db][pid] = cpu(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    time.sleep(0.05)
for db in dbs:
    n = int(re.search(r"transactions actually processed: (\d+)", benches[db].stdout.read()).group(1))
    print(f"{sum(last[db].values()) * 1000 / os.sysconf('SC_CLK_TCK') / n:.4f}")
EOF
}

declare -A runs
for round in $(seq "$ROUNDS"); do
    make_db feed_a 20260101000010 "ALTER TABLE tasks DISABLE TRIGGER trg_tasks_change_feed"
    make_db feed_b 20260101000010 ""
    make_db feed_c 99999999999999 ""
    for write in insert update; do
        read -r a b c <<<"$(cpu_per_tx "$DIR/$write.sql" feed_a feed_b feed_c | tr '\n' ' ')"
        echo "round $round $write: (a) $a (b) $b (c) $c ms/tx"
        runs[$write.a]="${runs[$write.a]:-} $a"
        runs[$write.b]="${runs[$write.b]:-} $b"
        runs[$write.c]="${runs[$write.c]:-} $c"
    done
done
for write in insert update; do
    python3 -c "
import statistics as s, sys
a, b, c = ([float(x) for x in v.split()] for v in sys.argv[1:])
m = s.median
print(f'$write: median ms/tx (a) {m(a):.4f} (b) {m(b):.4f} (c) {m(c):.4f}; (b)/(a) {m(b)/m(a):.2f}, (c)/(a) {m(c)/m(a):.2f}; per round (c)/(a): ' + ' '.join(f'{y/x:.2f}' for x, y in zip(a, c)))
" "${runs[$write.a]}" "${runs[$write.b]}" "${runs[$write.c]}"
done
