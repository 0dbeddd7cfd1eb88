#!/usr/bin/env bash
# The main job on the embedded defaults: a local repository, a SQLite database, no servers.
# Until `lockstep deploy` lands, the demo shows coordinated snapshots: the code version, the
# database and the config of a small project under one snapshot ID; a failed dump that never
# becomes a snapshot; lost data brought back; and plain restic reading the same repository.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e . >/dev/null

work=$(mktemp -d /tmp/lockstep-demo.XXXXXX)
export LOCKSTEP_PASSWORD="demo password, keep me safe"
export LOCKSTEP_REPOSITORY="$work/repository"   # the `repo` commands read this; lockstep.toml says the same
project="$work/notes"
mkdir -p "$project/config" "$project/secrets"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "A project: code in git, a SQLite database, config and a secret"
cd "$project"
git init -q
printf 'print("notes app v1")\n' > app.py
printf 'DEBUG=0\nPAGE_SIZE=50\n' > config/app.env
printf 'SECRET_KEY=%s\n' "$(python3 -c 'import secrets; print(secrets.token_hex(16))')" > secrets/.env
printf 'notes.db\n' > .gitignore
python3 - notes.db <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
db.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(1, 1001)])
db.commit()
print("notes:", db.execute("SELECT count(*) FROM notes").fetchone()[0])
PY
cat > lockstep.toml <<TOML
[repository]
url = "local:$work/repository"

[databases.notes]
url = "sqlite:///$project/notes.db"

[files]
config = ["config/*.env"]
secrets = ["secrets/.env"]
TOML
git add -A
git -c user.name=Demo -c user.email=demo@example.invalid commit -qm "notes app v1"

say "lockstep repo init, then one snapshot of code, database and config"
lockstep repo init
lockstep snapshot create -m "before the big cleanup"
lockstep snapshot list

say "Oops: somebody deletes most notes"
python3 - notes.db <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1]); db.execute("DELETE FROM notes WHERE id > 10"); db.commit()
print("notes left:", db.execute("SELECT count(*) FROM notes").fetchone()[0])
PY

say "Bring the database back from the snapshot (the commit prefix works as an ID)"
commit=$(git rev-parse --short HEAD)
lockstep snapshot show "$commit"
snapshot=$(lockstep snapshot show "$commit" --json | python3 -c "import json, sys; print(json.load(sys.stdin)['id'])")
lockstep repo dump "$snapshot" /databases/notes.sqlite3 > notes.db.restored
mv notes.db.restored notes.db
python3 -c "import sqlite3; print('notes restored:', sqlite3.connect('notes.db').execute('SELECT count(*) FROM notes').fetchone()[0])"

say "A dump that fails halfway never becomes a snapshot"
if lockstep repo backup --stdin-filename broken.sql --stdin-from-command -- sh -c 'echo "BEGIN;"; exit 3'; then
  echo "unexpected: the failed dump was accepted"; exit 1
fi

say "Check every byte, then let plain restic read the same repository"
lockstep repo check --read-data
if command -v restic >/dev/null; then
  RESTIC_PASSWORD="$LOCKSTEP_PASSWORD" restic -r "$work/repository" ls latest
else
  echo "(install restic to see it read lockstep's repository: apt-get install restic)"
fi
say "Done. Everything is under $work"
