#!/usr/bin/env bash
# System test: the warp Debian package under a real systemd (scripts/systemd-sandbox.sh), with a
# private PostgreSQL reached over a unix socket bound into the sandbox and a password handed to
# warpd as a systemd credential.
#
#   WARP_TEST_DEB=build-release/warp_0.1.0_amd64.deb tests/systemd/system_test.sh
#
# It checks, in order: the package installs (sysusers, tmpfiles, catalog) and its units pass
# `systemd-analyze verify` and `security --offline` at 2.0 or better; warpd-migrate migrates;
# the unit becomes active only after READY and StatusText shows a cycle within two intervals;
# exec children run under the hardening; reload applies a new interval, and a broken file
# leaves the service on the old one with file:line:column in the journal; SIGSTOP makes
# systemd's watchdog restart it and the lease invariant holds; journalctl -o json carries the
# WARP_* fields and MESSAGE_IDs, and journalctl -x the catalog text; stop drains and exits 0;
# warpd@NAME runs as instance NAME; a bad config at start exits 78 without a restart loop.
# Exit 0 pass, 1 fail, 77 skipped (not root, no package, no systemd): ctest shows the skip.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

skip() {
  echo "SKIP: $*"
  exit 77
}
[[ $(id -u) -eq 0 ]] || skip "needs root (namespaces, mounts)"
[[ -n ${WARP_TEST_DEB:-} && -f ${WARP_TEST_DEB:-} ]] ||
  skip "WARP_TEST_DEB names no package (scripts/test.sh builds one with cpack)"
[[ -x /lib/systemd/systemd ]] || skip "no /lib/systemd/systemd"
command -v unshare >/dev/null && command -v nsenter >/dev/null || skip "no unshare/nsenter"
unshare --pid --fork --mount --net --uts --ipc --cgroup true 2>/dev/null ||
  skip "this machine refuses new namespaces (unshare as root failed): no sandbox for systemd"

interval_s=2
work=$(mktemp -d /tmp/warp-systemd-test.XXXXXX)
sandbox=$work/sandbox
pgdir=""
failures=0

cleanup() {
  set +e
  if [[ -n ${WARP_SYSTEMD_TEST_KEEP:-} ]]; then
    echo "kept: scripts/systemd-sandbox.sh exec $sandbox ...; PostgreSQL in $pgdir"
    return
  fi
  if [[ -f $sandbox/pid && $failures -gt 0 ]]; then
    echo "--- journal of the sandbox (last 80 lines) ---"
    in_sandbox journalctl --no-pager -n 80 -o short-monotonic
  fi
  [[ -d $sandbox ]] && "$root/scripts/systemd-sandbox.sh" stop "$sandbox"
  [[ -n $pgdir ]] && "$root/scripts/test-postgres.sh" stop "$pgdir" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

in_sandbox() { "$root/scripts/systemd-sandbox.sh" exec "$sandbox" "$@"; }
unit_prop() { in_sandbox systemctl show -p "$2" --value "$1"; }

pass() { echo "ok   - $*"; }
fail() {
  echo "FAIL - $*"
  failures=$((failures + 1))
}
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds or time runs out.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# The events of warpd's journal as JSON lines since the given cursor-free boot.
warpd_json() { in_sandbox journalctl --no-pager -o json -u 'warpd*' "$@"; }
journal_has_event() { # journal_has_event EVENT [TEXT]
  warpd_json | python3 -c '
import json, sys
event, text = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
found = False
for line in sys.stdin:  # all of it: an early exit would fail the pipe (pipefail)
    r = json.loads(line)
    found = found or (r.get("WARP_EVENT") == event and text in r.get("MESSAGE", ""))
sys.exit(0 if found else 1)' "$@"
}
psql_warp() { "$WARP_TEST_PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -At -d "$dsn_super" "$@"; }

echo "== a private PostgreSQL, password auth over its unix socket =="
eval "$("$root/scripts/test-postgres.sh" start)"
pgdir=$WARP_TEST_PGDIR
port=$(sed -n 's/.*port=\([0-9]*\).*/\1/p' <<<"$WARP_TEST_DSN")
dsn_super="host=$pgdir port=$port user=postgres dbname=postgres"
password="sandbox-$RANDOM-$RANDOM"
psql_warp -c "CREATE ROLE warp LOGIN PASSWORD '$password'" -c "CREATE DATABASE warp OWNER warp"
dsn_super="host=$pgdir port=$port user=postgres dbname=warp"
# The warp role must prove its password; everything else stays as the test script made it.
sed -i '1i local all warp scram-sha-256' "$pgdir/data/pg_hba.conf"
psql_warp -c "SELECT pg_reload_conf()" >/dev/null
chmod o+x "$pgdir" # the socket's directory; the socket itself is 0777

echo "== a systemd sandbox with the package installed =="
WARP_SANDBOX_BIND="$pgdir:/run/warp-pg" "$root/scripts/systemd-sandbox.sh" start "$sandbox"
in_sandbox sh -c 'cat >/tmp/warp.deb' <"$WARP_TEST_DEB"
check "the package installs" in_sandbox sh -c 'dpkg -i /tmp/warp.deb >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; false; }'
check "postinst made the warp system user" in_sandbox sh -c 'getent passwd warp >/dev/null'
check "tmpfiles made an empty password file" in_sandbox test -f /etc/warp/db-password
check "the catalog is indexed" in_sandbox sh -c 'journalctl --list-catalog | grep -q "warpd started"'
check "systemd-analyze verify is clean" in_sandbox sh -c \
  'out=$(systemd-analyze verify /lib/systemd/system/warpd.service /lib/systemd/system/warpd-migrate.service /lib/systemd/system/warpd@a.service 2>&1) && [ -z "$out" ] || { echo "$out"; false; }'
security_ok() { # the exposure level, 0.0 to 10.0 in the output, is 0 to 100 for --threshold
  local out
  out=$(in_sandbox systemd-analyze security --offline=yes --threshold=20 --no-pager "$1" 2>&1) ||
    { echo "$out" | grep -v '✓'; return 1; }
  echo "     $(echo "$out" | grep 'Overall exposure level')"
}
check "systemd-analyze security rates warpd.service 2.0 or better" security_ok /lib/systemd/system/warpd.service
check "systemd-analyze security rates warpd@.service 2.0 or better" security_ok /lib/systemd/system/warpd@.service

write_config() { # write_config INTERVAL_SECONDS
  in_sandbox sh -c 'cat >/etc/warp/warpd.toml' <<EOF
[daemon]
instance = "sandbox"
shutdown_grace = "5s"

[store]
backend = "postgres"
dsn = "host=/run/warp-pg port=$port dbname=warp user=warp"
connect_timeout = "5s"

[scheduler]
interval = "${1}s"
retry_backoff = "1s"
retry_backoff_max = "2s"
max_attempts = 2

[leasing]
ttl = "6s"
renew_every = "2s"

[log]
level = "debug"                # lease_acquired / lease_released are debug records

[watchdog]
interval = "2s"
failure_streak = 2

[runner.ok]
transport = "exec"
command = ["/bin/sh", "-c", "cat >/dev/null; echo working on \$WARP_WORK_ID; sleep 1"]
timeout = "20s"
kill_grace = "1s"

[runner.fail]
transport = "exec"
command = ["/bin/sh", "-c", "cat >/dev/null; echo cannot >&2; exit 3"]
timeout = "20s"

[[schedule]]
name = "tick"
agents = ["worker"]
every = "1s"
kind = "sync"
misfire = "run_once"

[[schedule]]
name = "broken"
agents = ["flaky"]
every = "1s"
kind = "sync"
misfire = "run_once"
EOF
}
write_config "$interval_s"
in_sandbox sh -c "printf '%s\n' '$password' >/etc/warp/db-password"
# Quicker watchdog reactions than production for the test; everything else as shipped.
in_sandbox mkdir -p /etc/systemd/system/warpd.service.d
in_sandbox sh -c 'cat >/etc/systemd/system/warpd.service.d/test.conf' <<'EOF'
[Service]
WatchdogSec=8s
TimeoutAbortSec=2s
RestartSec=1s
EOF
in_sandbox systemctl daemon-reload

echo "== migrate =="
check "warpd-migrate.service migrates (password from LoadCredential=, scram auth)" in_sandbox systemctl start warpd-migrate.service
check "the schema is there" test "$(psql_warp -c "SELECT count(*) FROM warp.schema_migrations")" -ge 1
psql_warp <<'SQL'
INSERT INTO warp.tool_profiles (tool_profile_id, operations) VALUES ('basic', '{sync}');
INSERT INTO warp.agents (agent_slug, tool_profile_id, runner, business_link, max_active_leases)
VALUES ('worker', 'basic', 'ok', 'test:system', 2), ('flaky', 'basic', 'fail', 'test:system', 1);
SQL

# systemd logs every notification it receives at debug level: evidence of the protocol itself.
in_sandbox systemd-analyze log-level debug
notified() { # notified UNIT TEXT: systemd received a notification from UNIT containing TEXT
  in_sandbox journalctl --no-pager -u "$1" | grep -F "Got notification message" | grep -F -- "$2" >/dev/null
}

echo "== start =="
check "systemctl start returns with the unit active" in_sandbox systemctl start warpd.service
check "ActiveState is active" test "$(unit_prop warpd.service ActiveState)" = active
# READY=1 follows the daemon_started record; systemd logs "Started" when READY arrives.
ready_order() {
  in_sandbox journalctl --no-pager -o json | python3 -c '
import json, sys
started = ready = None
for line in sys.stdin:
    r = json.loads(line)
    if r.get("WARP_EVENT") == "daemon_started" and started is None:
        started = int(r["__MONOTONIC_TIMESTAMP"])
    if r.get("MESSAGE_ID") == "39f53479d3a045ac8e11786248231fbf" and r.get("UNIT") == "warpd.service" and ready is None:
        ready = int(r["__MONOTONIC_TIMESTAMP"])
sys.exit(0 if started is not None and ready is not None and started <= ready else 1)'
}
check "the unit became active only after warpd's READY (daemon_started precedes Started)" ready_order
check "systemd received READY=1 with a STATUS" notified warpd.service "READY=1, STATUS=started"
status_has_cycle() { [[ $(unit_prop warpd.service StatusText) == "cycle "* ]]; }
check "StatusText shows a cycle line within two intervals" wait_for $((2 * interval_s + 1)) status_has_cycle
echo "     StatusText: $(unit_prop warpd.service StatusText)"
done_items() { psql_warp -c "SELECT count(*) FROM warp.work_items w JOIN warp.agents a USING (agent_id) WHERE a.agent_slug = 'worker' AND w.state = 'done'"; }
some_done() { [[ $(done_items) -ge 1 ]]; }
check "exec children run under the hardening and complete their work" wait_for 20 some_done
main_pid=$(unit_prop warpd.service MainPID)

echo "== reload =="
write_config 3
in_sandbox systemctl reload warpd.service
check "reload applies a new interval" wait_for 10 journal_has_event config_reloaded "interval 3000ms"
check "systemd received RELOADING=1 with MONOTONIC_USEC" notified warpd.service "RELOADING=1, MONOTONIC_USEC="
check "and READY=1 after it" notified warpd.service "READY=1, STATUS=configuration reloaded"
in_sandbox sh -c 'printf "[scheduler]\ninterval = \"soon\"\n" >>/etc/warp/warpd.toml'
in_sandbox systemctl reload warpd.service
check "a broken file is rejected with file:line:column" \
  wait_for 10 journal_has_event config_rejected "/etc/warp/warpd.toml:"
rejected_status() { [[ $(unit_prop warpd.service StatusText) == *"reload rejected: /etc/warp/warpd.toml:"* ]]; }
check "StatusText says the reload was rejected, also after the next cycles" wait_for 5 rejected_status
sleep 4 # two more cycles at 2 s
check "StatusText still says so after further cycles" rejected_status
check "the service stays active on the old configuration" test "$(unit_prop warpd.service ActiveState)" = active
check "the same process is still running" test "$(unit_prop warpd.service MainPID)" = "$main_pid"
write_config 2
in_sandbox systemctl reload warpd.service
wait_for 10 journal_has_event config_reloaded "interval 2000ms" || fail "reload back to 2s"

echo "== SIGSTOP: systemd's watchdog restarts warpd =="
restarts_before=$(unit_prop warpd.service NRestarts)
in_sandbox kill -STOP "$main_pid"
restarted() {
  [[ $(unit_prop warpd.service NRestarts) -gt $restarts_before &&
    $(unit_prop warpd.service ActiveState) == active &&
    $(unit_prop warpd.service MainPID) != "$main_pid" ]]
}
check "the watchdog kills the stopped warpd and systemd restarts it (NRestarts grows)" wait_for 30 restarted
check "the journal says the watchdog fired" sh -c \
  "'$root/scripts/systemd-sandbox.sh' exec '$sandbox' journalctl --no-pager -u warpd.service | grep -q 'Watchdog timeout'"
# Work continues under new leases after the old ones expire.
done_before=$(done_items)
more_done() { [[ $(done_items) -gt $done_before ]]; }
check "work is done again after the restart" wait_for 30 more_done
# The lease invariant over the whole history: at no instant more than max_active owners of an
# agent (a lease owns from acquisition to its release or its expiry, whichever came first), and fencing
# tokens strictly increasing per agent in acquisition order.
overlaps=$(psql_warp <<'SQL'
WITH l AS (
  SELECT l.agent_id, l.acquired_at AS t0, least(coalesce(l.released_at, 'infinity'), l.expires_at) AS t1,
         coalesce(a.max_active_leases, 1) AS bound
  FROM warp.agent_leases l JOIN warp.agents a USING (agent_id)
)
SELECT count(*) FROM l
WHERE (SELECT count(*) FROM l o WHERE o.agent_id = l.agent_id AND o.t0 <= l.t0 AND o.t1 > l.t0) > l.bound;
SQL
)
check "no instant had more owners than max_active ($overlaps violations)" test "$overlaps" -eq 0
fencing=$(psql_warp -c "SELECT count(*) FROM (SELECT fencing_token <= lag(fencing_token) OVER (PARTITION BY agent_id ORDER BY acquired_at, lease_id) AS bad FROM warp.agent_leases) s WHERE bad")
check "fencing tokens increase per agent ($fencing violations)" test "$fencing" -eq 0

echo "== journald fields and the catalog =="
has_fields() { # has_fields EVENT FIELD...
  warpd_json | python3 -c '
import json, sys
event, fields = sys.argv[1], sys.argv[2:]
found = False
for line in sys.stdin:  # all of it: an early exit would fail the pipe (pipefail)
    r = json.loads(line)
    found = found or (r.get("WARP_EVENT") == event and len(r.get("MESSAGE_ID", "")) == 32
                      and all(r.get(f) for f in fields)
                      and r.get("SYSLOG_IDENTIFIER") == "warpd" and "PRIORITY" in r)
sys.exit(0 if found else 1)' "$@"
}
check "cycle records carry WARP_CYCLE_ID, WARP_RUN_ID and a MESSAGE_ID" has_fields cycle_completed WARP_CYCLE_ID WARP_RUN_ID
check "lease records carry agent, lease, fencing token, work" \
  has_fields lease_released WARP_AGENT WARP_LEASE_ID WARP_FENCING_TOKEN WARP_WORK_ID
check "dispatch records carry agent, lease, fencing token, work" \
  has_fields dispatch_started WARP_AGENT WARP_LEASE_ID WARP_FENCING_TOKEN WARP_WORK_ID
observation_logged() { has_fields observation_opened WARP_OBSERVATION_KIND WARP_SEVERITY; }
check "observation records carry kind and severity" wait_for 20 observation_logged
check "runner output is logged with the work's fields" has_fields runner_output WARP_AGENT WARP_WORK_ID
check "journalctl -x shows the catalog text" sh -c \
  "'$root/scripts/systemd-sandbox.sh' exec '$sandbox' journalctl --no-pager -x -u warpd.service | grep -q 'Subject: warpd started'"

echo "== stop =="
main_pid=$(unit_prop warpd.service MainPID)
check "systemctl stop returns" in_sandbox systemctl stop warpd.service
check "the unit is inactive, not failed" test "$(unit_prop warpd.service ActiveState)" = inactive
check "systemd received STOPPING=1" notified warpd.service "STOPPING=1, STATUS=draining"
check "warpd exited 0" test "$(unit_prop warpd.service ExecMainStatus)" = 0
check "warpd drained (daemon_stopping, daemon_stopped)" sh -c \
  "'$root/scripts/systemd-sandbox.sh' exec '$sandbox' journalctl --no-pager -o json _PID=$main_pid | grep -q '\"WARP_EVENT\":\"daemon_stopping\"' &&
   '$root/scripts/systemd-sandbox.sh' exec '$sandbox' journalctl --no-pager -o json _PID=$main_pid | grep -q '\"WARP_EVENT\":\"daemon_stopped\"'"

echo "== warpd@NAME: an instance per unit instance =="
in_sandbox install -m 0640 -g warp /etc/warp/warpd.toml /etc/warp/warpd-b.toml
check "warpd@b starts" in_sandbox systemctl start warpd@b.service
instance_b_seen() { [[ $(psql_warp -c "SELECT count(*) FROM warp.scheduler_instances WHERE instance = 'b'") == 1 ]]; }
check "it runs as instance b (its heartbeat row), whatever the file says" wait_for 10 instance_b_seen
check "it has its own state directory" in_sandbox test -d /var/lib/warp/b
check "it stops cleanly" in_sandbox systemctl stop warpd@b.service
check "and ends inactive" test "$(unit_prop warpd@b.service ActiveState)" = inactive

echo "== a bad configuration at start =="
in_sandbox sh -c 'printf "[scheduler]\nintervall = \"2s\"\n" >/etc/warp/warpd.toml'
in_sandbox systemctl reset-failed warpd.service 2>/dev/null || true
restarts_before=$(unit_prop warpd.service NRestarts)
if in_sandbox systemctl start warpd.service 2>/dev/null; then
  fail "start with a bad configuration fails"
else
  pass "start with a bad configuration fails"
fi
sleep 3 # RestartSec=1s: a restart loop would have begun
check "the unit is failed, not restarting" test "$(unit_prop warpd.service ActiveState)" = failed
check "no restart loop (NRestarts unchanged)" test "$(unit_prop warpd.service NRestarts)" = "$restarts_before"
check "exit status 78 (EX_CONFIG) is in the journal" sh -c \
  "'$root/scripts/systemd-sandbox.sh' exec '$sandbox' journalctl --no-pager -u warpd.service | grep -q 'status=78'"

if ((failures > 0)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
