#!/usr/bin/env bash
# The main job on the embedded defaults: a local repository, a SQLite database, no servers.
# Until `lockstep deploy` lands, the demo shows the repository: snapshot an app and its
# database, break the data, restore it, and prove that plain restic reads everything too.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e . >/dev/null

work=$(mktemp -d /tmp/lockstep-demo.XXXXXX)
export LOCKSTEP_REPOSITORY="$work/repository"
export LOCKSTEP_PASSWORD="demo password, keep me safe"
app="$work/app"
mkdir -p "$app"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "An app with a SQLite database"
cat > "$app/app.py" <<'PY'
print("notes app v1")
PY
python3 - "$app/notes.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
db.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(1, 1001)])
db.commit()
print("notes:", db.execute("SELECT count(*) FROM notes").fetchone()[0])
PY

say "lockstep repo init"
lockstep repo init

say "Snapshot the code, and the database through a consistent SQL dump"
lockstep repo backup "$app" --tag code
lockstep repo backup --tag database --stdin-filename notes.sql --stdin-from-command -- \
  python3 -c "import sqlite3, sys; [sys.stdout.write(line + '\n') for line in sqlite3.connect(sys.argv[1]).iterdump()]" "$app/notes.db"
lockstep repo snapshots

say "A dump that fails halfway never becomes a snapshot"
if lockstep repo backup --stdin-filename broken.sql --stdin-from-command -- sh -c 'echo "BEGIN;"; exit 3'; then
  echo "unexpected: the failed dump was accepted"; exit 1
fi

say "Oops: somebody deletes most notes"
python3 - "$app/notes.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1]); db.execute("DELETE FROM notes WHERE id > 10"); db.commit()
print("notes left:", db.execute("SELECT count(*) FROM notes").fetchone()[0])
PY

say "Restore the database from the latest database snapshot"
database_snapshot=$(lockstep repo snapshots --tag database --json | python3 -c "import json, sys; print(json.load(sys.stdin)[-1]['id'])")
rm "$app/notes.db"
lockstep repo dump "$database_snapshot" /notes.sql | python3 -c "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.executescript(sys.stdin.read()); print('notes restored:', db.execute('SELECT count(*) FROM notes').fetchone()[0])" "$app/notes.db"

say "Check every byte, then let plain restic read the same repository"
lockstep repo check --read-data
if command -v restic >/dev/null; then
  RESTIC_PASSWORD="$LOCKSTEP_PASSWORD" restic -r "$LOCKSTEP_REPOSITORY" snapshots
  RESTIC_PASSWORD="$LOCKSTEP_PASSWORD" restic -r "$LOCKSTEP_REPOSITORY" check --read-data
else
  echo "(install restic to see it read lockstep's repository: apt-get install restic)"
fi
lockstep repo stats
say "Done. Everything is under $work"
