#!/usr/bin/env bash
# Patroni's own Python environment: a venv from the system Python (/usr/bin/python3,
# Debian 12's 3.11) at a fixed place the postgres user can read, with
# requirements-patroni.txt installed. PostgreSQL refuses to run as root, so Patroni
# runs as postgres; the project's .venv (under /root, 0700) and a CI clone (under
# `mktemp -d`, 0700) are out of its reach.
#
#   PAM_PATRONI_VENV   where the venv goes (default /opt/pamportal/patroni)
#
# Idempotent and safe to run concurrently: nothing is done while the stamp file in the
# venv equals requirements-patroni.txt; otherwise one run at a time (flock) builds or
# updates it, and the others find it done when they get the lock.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
REQUIREMENTS="$HERE/requirements-patroni.txt"
VENV="${PAM_PATRONI_VENV:-/opt/pamportal/patroni}"
STAMP="$VENV/.requirements-patroni.txt"
PYTHON=/usr/bin/python3

up_to_date() {
    [ -x "$VENV/bin/patroni" ] && cmp -s "$STAMP" "$REQUIREMENTS"
}

up_to_date && exit 0

parent="$(dirname "$VENV")"
if ! mkdir -p "$parent" 2>/dev/null || [ ! -w "$parent" ]; then
    echo "patroni_env: cannot write to $parent; run as root, or set PAM_PATRONI_VENV to a" >&2
    echo "patroni_env: directory of yours (Patroni then runs as you, not as postgres)" >&2
    exit 1
fi
# Readable and traversable by postgres all the way down, whatever the umask.
umask 022
chmod 0755 "$parent"

exec 9>"$parent/.patroni-env.lock"
flock 9
up_to_date && exit 0  # another run finished it while we waited

if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "patroni_env: $PYTHON has no venv module; as root run: apt-get install -y python3-venv" >&2
        exit 1
    fi
    echo "patroni_env: installing python3-venv from Debian"
    apt-get -qq -o DPkg::Lock::Timeout=600 update
    DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
        python3-venv >/dev/null
fi

# A venv left half-made by an interrupted run is made again.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$VENV"
    echo "patroni_env: creating $VENV from $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

log="$VENV/.install.log"
echo "patroni_env: installing requirements-patroni.txt into $VENV"
if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS" >"$log" 2>&1; then
    cat "$log" >&2
    echo "patroni_env: pip failed (log above, kept in $log)" >&2
    exit 1
fi
chmod -R a+rX "$VENV"

# Prove the postgres user can run it from here, when that is who will.
if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1; then
    if ! runuser -u postgres -- "$VENV/bin/patroni" --version >/dev/null; then
        echo "patroni_env: the postgres user cannot run $VENV/bin/patroni (check the modes of its parents)" >&2
        exit 1
    fi
fi
cp "$REQUIREMENTS" "$STAMP"
echo "patroni_env: $("$VENV/bin/patroni" --version) ready in $VENV"
