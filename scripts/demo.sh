#!/usr/bin/env bash
# The main job on the embedded defaults (SQLite, a local repository, the built-in proxy, local
# processes): deploy the example app, snapshot it, deploy a release with a migration, deploy a
# broken release that rolls back by itself, then roll back to v1 with its data.
#
# It works on a copy of examples/notes in a temporary git repository, so each version is a
# commit. Ports: 8719 (the app, through lockstep's proxy), 8721 and 8722 (the blue and green slots).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python3 -m pip install -q --disable-pip-version-check -e . >/dev/null
python3 -m compileall -q src/lockstep >/dev/null  # bytecode, as a wheel install has it (see test.sh)

work=$(mktemp -d /tmp/lockstep-demo.XXXXXX)
app="$work/notes"
export LOCKSTEP_PASSWORD="demo password, keep me safe"
url="http://127.0.0.1:8719"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
commit() { git add -A && git -c user.name=Demo -c user.email=demo@example.invalid commit -qm "$1"; }
request() {  # METHOD PATH [JSON]: one request through lockstep's proxy, the body printed
  python3 - "$@" <<'PY'
import json, sys, urllib.request
method, path = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request("http://127.0.0.1:8719" + path, data=data, method=method,
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as response:
    print(response.read().decode())
PY
}
agent_pid=""
cleanup() {
  cd "$app" 2>/dev/null || return 0
  if [ -n "$agent_pid" ]; then
    lockstep agent stop --apps >/dev/null 2>&1 || kill "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

say "The example app, v1, in its own git repository (lockstep.toml describes it)"
mkdir -p "$app"
cp -a examples/notes/. "$app/"
rm -rf "$app/demo" "$app/.lockstep"
cd "$app"
git init -q
commit "notes 1.0.0"
git log --oneline

say "lockstep repo init, and the agent that keeps the app running (in the background here)"
lockstep repo init
lockstep agent > "$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 50); do lockstep status --json >/dev/null 2>&1 && break; sleep 0.2; done

say "Deploy v1: preflight, lock, release, snapshot, migrate, start, health, smoke, switch, watch"
lockstep deploy --log-format text -m "first release"
request POST /notes '{"text": "buy milk"}'
request POST /notes '{"text": "call the plumber"}'

say "A coordinated snapshot: the code version, the database and the config under one ID"
lockstep snapshot create -m "after the first notes"
lockstep snapshot list

say "Deploy v2, whose migration adds tags"
cp -a "$root/examples/notes/demo/v2/." .
commit "notes 2.0.0: tags"
lockstep deploy --log-format text -m "tags"
request POST /notes '{"text": "written under v2 #new"}'
request GET /version

say "Deploy a broken v3: its health check never passes, so lockstep rolls it back by itself"
cp -a "$root/examples/notes/demo/v3-broken/." .
commit "notes 3.0.0 (broken)"
status=0
lockstep deploy --log-format text -m "broken on purpose" || status=$?
echo "lockstep deploy exited with $status (3: failed and rolled back; v2 still serves)"
[ "$status" = 3 ] || { echo "unexpected exit code"; exit 1; }
request GET /version

say "Roll back to v1 with its data: lockstep shows which writes the restore discards"
lockstep rollback --with-data --yes --log-format text
request GET /version
request GET /api/notes

say "What happened, and what serves now"
lockstep history
lockstep status

say "Check every byte of the repository, and let plain restic read it too"
lockstep repo check --read-data
if command -v restic >/dev/null; then
  RESTIC_PASSWORD="$LOCKSTEP_PASSWORD" restic -r "$app/.lockstep/repository" snapshots
else
  echo "(install restic to see it read lockstep's repository: apt-get install restic)"
fi
say "Done. The project is in $app; the app stops with the agent now."
