#!/usr/bin/env bash
# The Debian packages the test suite needs, installed when missing: `make test`,
# `make test-embedded` and `.ci/run` run this first. As root (or with passwordless
# sudo) it installs what is missing; otherwise it stops at once and prints the
# apt-get command to run. PAM_SKIP_SYSTEM_PACKAGES=1 skips the check (e.g. a
# non-Debian machine whose equivalents are installed by hand).
#
#   chromium                        browser tests (pytest-playwright drives /usr/bin/chromium)
#   etcd-server etcd-client         the etcd preflight check and clustering
#   poppler-utils                   pdftotext, to read the PDF audit reports back
#   libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core   WeasyPrint's PDF reports
#   libreoffice-calc-nogui          opening the CSV audit exports as a spreadsheet would
#   rsyslog rsyslog-gnutls          a real syslog collector (TLS) for SIEM forwarding
#   systemd                         systemd-analyze verify on the units of `manage.py install_units`
#   postgresql-15                   PostgreSQL under Patroni, one member per node (/usr/lib/postgresql/15/bin)
#   python3-venv                    Patroni's own venv from the system Python (tools/patroni_env.sh)
#
# As root it then builds Patroni's venv (tools/patroni_env.sh, a no-op when up to date).
set -euo pipefail

PACKAGES=(
    chromium etcd-server etcd-client poppler-utils
    libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core
    libreoffice-calc-nogui rsyslog rsyslog-gnutls systemd
    postgresql-15 python3-venv
)

# Patroni runs as postgres from /opt/pamportal/patroni, which only root can create.
patroni_env() {
    if [ "$(id -u)" -eq 0 ]; then
        bash "$(dirname "$0")/patroni_env.sh"
    fi
}

if [ "${PAM_SKIP_SYSTEM_PACKAGES:-}" = "1" ]; then
    exit 0
fi
if ! command -v dpkg >/dev/null 2>&1; then
    echo "system_packages: no dpkg here (not Debian): install the equivalents of ${PACKAGES[*]}," >&2
    echo "then run again with PAM_SKIP_SYSTEM_PACKAGES=1" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed$' || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    patroni_env
    exit 0
fi

# Several makes at once wait for each other on dpkg's lock rather than fail.
APT=(apt-get -qq -o DPkg::Lock::Timeout=600)
install=(install -y --no-install-recommends "${missing[@]}")
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n env DEBIAN_FRONTEND=noninteractive)
else
    echo "system_packages: missing Debian packages: ${missing[*]}" >&2
    echo "system_packages: as root, run:" >&2
    echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "system_packages: installing ${missing[*]} from Debian"
"${sudo[@]}" "${APT[@]}" update
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" "${APT[@]}" "${install[@]}" >/dev/null
patroni_env
