# pamportal: `make run` starts a standalone node; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test test-embedded bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PIP) install --quiet -r requirements-dev.txt
	touch $(VENV)/.runtime $@

run: $(VENV)/.runtime
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py tls_ensure
	$(PY) manage.py setup_token
	$(PY) manage.py serve

test: $(VENV)/.dev
	$(VENV)/bin/pytest

# The embedded default (SQLite, filesystem broker), whatever the environment says. The
# multi-node cluster tests run in `make test`; a cluster runs on PostgreSQL and Redis.
test-embedded: $(VENV)/.dev
	env -u DATABASE_URL -u CELERY_BROKER_URL $(VENV)/bin/pytest -m "not cluster"

bench: $(VENV)/.dev
	$(PY) bench/audit.py

clean:
	rm -rf $(VENV) var
