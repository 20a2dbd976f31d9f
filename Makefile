# pamportal: `make run` starts a standalone node; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test test-embedded test-fast lint system-packages bench clean

# Creating the venv and installing into it take one lock, so that several `make run`
# started at once on a fresh clone build it once: each step runs under the lock and
# checks again, inside it, whether another make has done it meanwhile.
VENV_LOCK := $(VENV)/.lock
LOCKED := mkdir -p $(VENV) && flock $(VENV_LOCK) sh -c

$(VENV)/.created:
	$(LOCKED) 'test -e $@ || { $(PYTHON) -m venv $(VENV) && $(PIP) install --quiet --upgrade pip && touch $@; }'

$(VENV)/.runtime: requirements.txt | $(VENV)/.created
	$(LOCKED) 'test $@ -nt requirements.txt || { $(PIP) install --quiet -r requirements.txt && touch $@; }'

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/.created
	$(LOCKED) 'test $@ -nt requirements.txt -a $@ -nt requirements-dev.txt || { $(PIP) install --quiet -r requirements-dev.txt && touch $(VENV)/.runtime $@; }'

# Debian packages the suite needs (browser, etcd, PDF and spreadsheet tools, rsyslog):
# installed when missing as root, otherwise the apt-get command to run is printed.
system-packages:
	bash tools/system_packages.sh

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

# serve --prepare: the TLS certificate, the node's database (its PostgreSQL member
# first, once the node was moved onto one), migrations, static files, a setup token.
run: $(VENV)/.runtime
	$(PY) manage.py serve --prepare

test: system-packages lint $(VENV)/.dev
	$(VENV)/bin/pytest

# The embedded default (SQLite, filesystem broker), whatever the environment says. The
# multi-node cluster tests run in `make test`; a cluster runs on PostgreSQL and Redis.
test-embedded: system-packages $(VENV)/.dev
	env -u DATABASE_URL -u CELERY_BROKER_URL $(VENV)/bin/pytest -m "not cluster"

# The quick loop while editing: no browser, no real node processes, no multi-node
# cluster; on whatever database the environment names (SQLite by default).
test-fast: $(VENV)/.dev
	$(VENV)/bin/pytest -m "not browser and not cluster and not processes"

bench: $(VENV)/.dev
	$(PY) bench/audit.py

clean:
	rm -rf $(VENV) var
