# Sluice: `make run` serves on embedded defaults, `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed
PORT ?= 8000

# The test suite uses this machine's PostgreSQL and Redis unless told otherwise.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: setup run demo test lint bench bench-routing migrate browser-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

migrate: setup
	$(BIN)/python manage.py migrate --noinput -v0

run: migrate
	$(BIN)/python -m config.run --port $(PORT)

# Production (README "Running in production"): DATABASE_URL, REDIS_URL, SLUICE_SECRET_KEY and
# SLUICE_ALLOWED_HOSTS come from the environment. migrate runs the start-up checks (it refuses
# SQLite or a missing secret); supervisord then keeps gunicorn (one uvicorn worker per core),
# the Celery workers and one beat running in the foreground (deploy/supervisord.conf).
# `make reload` in another terminal: new web workers, in-flight streams finish on the old ones.
.PHONY: prod reload
prod reload: export SLUICE_ENV = production
prod reload: export SLUICE_VAR_DIR ?= $(CURDIR)/var
prod: export PORT := $(PORT)
prod: setup
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py collectstatic --noinput -v0
	$(BIN)/supervisord -n -c deploy/supervisord.conf

reload:
	$(BIN)/supervisorctl -c deploy/supervisord.conf signal HUP web

# A few minutes of mixed traffic against a running `make run` (in another terminal).
demo: setup
	$(BIN)/python -m bench.demo --url http://127.0.0.1:$(PORT)

# Debian's Chromium drives the dashboard's browser tests (no browser downloads here).
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null; \
	  else echo "browser tests need: apt-get install chromium chromium-driver"; fi; }

# Debian's nginx fronts two web replicas in tests/e2e/test_nginx_replicas.py (deploy/nginx.conf).
.PHONY: nginx-deps
nginx-deps:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >/dev/null; \
	  else echo "the nginx test needs: apt-get install nginx"; fi; }

lint: setup
	$(BIN)/ruff check .

test: setup browser-deps nginx-deps lint
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench
	$(BIN)/python -m bench.costs

# Round robin, least-load and prefix-aware routing on one seeded workload (about 5 minutes).
bench-routing: setup
	$(BIN)/python -m bench.routing

# The inputs of docs/scaling.md (about 2.5 minutes): streams/s per web process, call-log inserts,
# rollups, Redis commands per request. It needs PostgreSQL (DATABASE_URL's server; it creates
# and drops its own sluice_scale database) and Redis (db 9, flushed).
.PHONY: bench-scale
bench-scale: setup
	$(BIN)/python -m bench.scale

clean:
	rm -rf $(VENV) var
