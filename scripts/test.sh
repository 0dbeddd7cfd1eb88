#!/usr/bin/env bash
# Install what the tests need on a fresh Debian machine, then run the whole test suite.
# Real things only: restic reads what lockstep writes, moto serves S3 on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=""
command -v restic >/dev/null || need_apt="$need_apt restic"
command -v zstd >/dev/null || need_apt="$need_apt zstd"
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt="$need_apt nginx"
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt="$need_apt haproxy"
command -v wrk >/dev/null || need_apt="$need_apt wrk"
command -v chromium >/dev/null || need_apt="$need_apt chromium"
[ -x /usr/sbin/sshd ] || need_apt="$need_apt openssh-server"  # multi-host deploys over real SSH
[ -e /usr/share/zoneinfo/Europe/Berlin ] || need_apt="$need_apt tzdata"
if [ -n "$need_apt" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need_apt >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need_apt >/dev/null
  fi
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# Bytecode, as a wheel install would have it: an editable install has none, and with
# PYTHONDONTWRITEBYTECODE (set on these machines) every lockstep process the tests start would
# compile its ~60 modules again (about 70 ms each time).
python3 -m compileall -q src/lockstep
ruff check src tests bench scripts
ruff format --check src tests bench scripts
mypy
# Two workers (pytest-xdist), a test file at a time each: most of the suite's time is deploys
# waiting on real processes, so the second core would otherwise sit idle. LOCKSTEP_TEST_WORKERS=0
# runs everything in one process.
python3 -m pytest -q -p no:cacheprovider -n "${LOCKSTEP_TEST_WORKERS:-2}" --dist loadfile --durations=30 "$@"
