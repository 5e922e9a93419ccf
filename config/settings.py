"""Sluice settings: everything comes from the environment (see .env.example).

With nothing set, Sluice runs on embedded defaults: SQLite under var/, Django's in-process
cache and a filesystem Celery broker. DATABASE_URL and REDIS_URL switch the same code to
PostgreSQL and Redis.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ
import plotly
from django.core.exceptions import ImproperlyConfigured

from config.env import envbool, envfloat, envint, envstr

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("SLUICE_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


# SLUICE_ENV=production (README "Running in production", `make prod`): DEBUG off, the secret
# key and the allowed hosts from the environment only, secure cookies behind TLS at nginx,
# collected static files served by whitenoise. Its start-up check (config/checks.py) refuses
# SQLite, a missing Redis, a missing or weak secret key, DEBUG and unset allowed hosts.
SLUICE_ENV = envstr("SLUICE_ENV", "development")
if SLUICE_ENV not in ("development", "production"):
    raise ImproperlyConfigured(f"SLUICE_ENV must be development or production, not {SLUICE_ENV!r}")
PRODUCTION = SLUICE_ENV == "production"


def _secret_key() -> str:
    """A stable key per checkout, so sessions survive restarts without any set-up; in
    production only SLUICE_SECRET_KEY ("" makes Django refuse to sign anything, and the
    start-up check says what to set)."""
    if (key := envstr("SLUICE_SECRET_KEY")) or PRODUCTION:
        return key
    path = VAR_DIR / "secret.key"
    if not path.exists():
        # Written aside and linked into place: of processes starting together on a fresh var
        # dir, one key wins and every one of them reads it (never a half-written file).
        aside = path.with_name(f".secret.key.{os.getpid()}")
        aside.write_text(secrets.token_urlsafe(50))
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        finally:
            aside.unlink()
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("SLUICE_DEBUG", False)
# Production has no default: the start-up check asks for the host names nginx forwards.
ALLOWED_HOSTS = [h.strip() for h in envstr("SLUICE_ALLOWED_HOSTS", "" if PRODUCTION else "*")
                 .split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in envstr("SLUICE_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "proxy",
    "analytics",
    "dashboard",
    "batch",
    "alerts",
    "config.apps.SluiceConfig",  # the start-up checks (config/checks.py)
    "pool",
]

# For the admin, the dashboard and the ops API. /v1/* bypasses them (see config/asgi.py).
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

if PRODUCTION:
    # TLS ends at nginx (deploy/nginx.conf), which says so in X-Forwarded-Proto: cookies are
    # sent over HTTPS only. SLUICE_SECURE_COOKIES=0 for a trial over plain HTTP.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = envbool("SLUICE_SECURE_COOKIES", True)
    # nginx redirects HTTP to HTTPS and may add HSTS itself; either can be Django's instead.
    SECURE_SSL_REDIRECT = envbool("SLUICE_SSL_REDIRECT", False)
    SECURE_HSTS_SECONDS = envint("SLUICE_HSTS_SECONDS", 0)
    # Collected static files (admin CSS, plotly.js) with hashed names, compressed, cached
    # forever. A sync-only middleware, on the full stack only: /v1/* never passes through it.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_env = environ.Env()
DATABASES = {
    "default": _env.db_url_config(
        envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'sluice.sqlite3'}")
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process append calls while Celery reads them.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
else:
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 3)
# Test runs that share one PostgreSQL at once (developers, CI) each name their own database.
if _test_db := envstr("SLUICE_TEST_DATABASE_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": _test_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = envstr("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery: Redis when configured, else kombu's filesystem transport (no server needed).
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "celery-broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
    }
CELERY_TASK_IGNORE_RESULT = True
# Prefork processes per Celery worker (0: one per core, Celery's default).
if _worker_concurrency := envint("SLUICE_WORKER_CONCURRENCY", 0):
    CELERY_WORKER_CONCURRENCY = _worker_concurrency
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Where `manage.py collectstatic` puts them for production (whitenoise or nginx serve them).
STATIC_ROOT = Path(envstr("SLUICE_STATIC_ROOT") or VAR_DIR / "static")
# plotly.js comes from the installed plotly package: no CDN, same version as the figures.
STATICFILES_DIRS = [("plotly", Path(plotly.__file__).parent / "package_data")]
LOGIN_URL = "/admin/login/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "sluice": {"handlers": ["console"], "level": envstr("SLUICE_LOG_LEVEL", "INFO")},
    },
}

# Prompts can be long (and carry images): the largest request body accepted, in bytes.
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("SLUICE_MAX_REQUEST_BYTES", 32 * 1024 * 1024)

# --- Sluice -------------------------------------------------------------------------------
# Accepted as an API key by the proxy and as an admin token by the ops API.
SLUICE_MASTER_KEY = envstr("SLUICE_MASTER_KEY")
# Outbound calls to the pool: default timeouts (a route may override each in the admin).
SLUICE_UPSTREAM_CONNECT_TIMEOUT_S = envfloat("SLUICE_UPSTREAM_CONNECT_TIMEOUT_S", 5.0)
# Time to the backend's first byte; for a stream, to its first event. Expired: retried.
SLUICE_UPSTREAM_TTFB_TIMEOUT_S = envfloat("SLUICE_UPSTREAM_TTFB_TIMEOUT_S", 60.0)
# Longest silence between two reads once the answer has started (idle timeout).
SLUICE_UPSTREAM_READ_TIMEOUT_S = envfloat("SLUICE_UPSTREAM_READ_TIMEOUT_S", 300.0)
# The whole call, every attempt included.
SLUICE_UPSTREAM_TOTAL_TIMEOUT_S = envfloat("SLUICE_UPSTREAM_TOTAL_TIMEOUT_S", 900.0)
# Retries before the first byte: attempts per model of a route's chain, exponential backoff
# with jitter between them, and a retry budget (Envoy's): retries may be at most
# SLUICE_RETRY_BUDGET_PERCENT of the requests of the last SLUICE_RETRY_BUDGET_WINDOW_S, but
# SLUICE_RETRY_BUDGET_MIN retries per window are always allowed.
SLUICE_RETRY_MAX_ATTEMPTS = envint("SLUICE_RETRY_MAX_ATTEMPTS", 3)
SLUICE_RETRY_BACKOFF_INITIAL_S = envfloat("SLUICE_RETRY_BACKOFF_INITIAL_S", 0.025)
SLUICE_RETRY_BACKOFF_MAX_S = envfloat("SLUICE_RETRY_BACKOFF_MAX_S", 1.0)
SLUICE_RETRY_BUDGET_PERCENT = envfloat("SLUICE_RETRY_BUDGET_PERCENT", 20.0)
SLUICE_RETRY_BUDGET_WINDOW_S = envfloat("SLUICE_RETRY_BUDGET_WINDOW_S", 10.0)
SLUICE_RETRY_BUDGET_MIN = envint("SLUICE_RETRY_BUDGET_MIN", 10)
# Circuit breaker per backend (each overridable per backend in the admin): it opens after
# SLUICE_BREAKER_FAILURES consecutive failures, or when the error rate over the last
# SLUICE_BREAKER_WINDOW_S reaches SLUICE_BREAKER_ERROR_RATE with at least
# SLUICE_BREAKER_MIN_REQUESTS calls in the window; after SLUICE_BREAKER_COOLDOWN_S it lets one
# probe request through (half-open), and that probe's success closes it.
SLUICE_BREAKER_FAILURES = envint("SLUICE_BREAKER_FAILURES", 5)
SLUICE_BREAKER_ERROR_RATE = envfloat("SLUICE_BREAKER_ERROR_RATE", 0.5)
SLUICE_BREAKER_WINDOW_S = envfloat("SLUICE_BREAKER_WINDOW_S", 10.0)
SLUICE_BREAKER_MIN_REQUESTS = envint("SLUICE_BREAKER_MIN_REQUESTS", 20)
SLUICE_BREAKER_COOLDOWN_S = envfloat("SLUICE_BREAKER_COOLDOWN_S", 10.0)
# Overload: when every backend of a model is at its max_concurrency, requests wait in arrival
# order, at most SLUICE_QUEUE_MAX per model and SLUICE_QUEUE_TIMEOUT_S each; beyond either,
# 503 with Retry-After.
SLUICE_QUEUE_MAX = envint("SLUICE_QUEUE_MAX", 1000)
SLUICE_QUEUE_TIMEOUT_S = envfloat("SLUICE_QUEUE_TIMEOUT_S", 30.0)
# Backend choice (proxy/scheduler.py; the policy is per route in the admin). Affinity to a
# prefix's or a session's backend holds while its load stays within SLUICE_BALANCE_LOAD_FACTOR
# times its fair share of the pool's, or within SLUICE_BALANCE_LOAD_SLACK requests of it (at
# low traffic); prefixes are hashed in blocks of ..._PREFIX_BLOCK_CHARS characters (growing
# by 25 % from the fifth on), ..._PREFIX_BLOCKS of them remembered.
SLUICE_BALANCE_LOAD_FACTOR = envfloat("SLUICE_BALANCE_LOAD_FACTOR", 1.25)
SLUICE_BALANCE_LOAD_SLACK = envfloat("SLUICE_BALANCE_LOAD_SLACK", 4.0)
SLUICE_BALANCE_PREFIX_BLOCK_CHARS = envint("SLUICE_BALANCE_PREFIX_BLOCK_CHARS", 256)
SLUICE_BALANCE_PREFIX_BLOCKS = envint("SLUICE_BALANCE_PREFIX_BLOCKS", 200_000)
SLUICE_BALANCE_SESSIONS = envint("SLUICE_BALANCE_SESSIONS", 100_000)
# How often each backend's /metrics is scraped for its load (0: never; own counts only).
SLUICE_LOAD_SCRAPE_S = envfloat("SLUICE_LOAD_SCRAPE_S", 1.0)
# Rate limits of a key without its own (0: unlimited). Routes set theirs in the admin.
SLUICE_KEY_RPM_LIMIT = envint("SLUICE_KEY_RPM_LIMIT", 0)
SLUICE_KEY_TPM_LIMIT = envint("SLUICE_KEY_TPM_LIMIT", 0)
# Input limits operators may want to change (OpenAI's own: n <= 128).
SLUICE_MAX_N = envint("SLUICE_MAX_N", 128)
SLUICE_MAX_TOKENS_LIMIT = envint("SLUICE_MAX_TOKENS_LIMIT", 131072)
# Exact cache (on per route in the admin): the largest answer stored, and how many entries the
# in-process store keeps when REDIS_URL is not set (least recently used out first).
SLUICE_CACHE_MAX_ENTRY_BYTES = envint("SLUICE_CACHE_MAX_ENTRY_BYTES", 1_048_576)
SLUICE_CACHE_LOCAL_MAX_ENTRIES = envint("SLUICE_CACHE_LOCAL_MAX_ENTRIES", 10_000)
SLUICE_UPSTREAM_MAX_CONNECTIONS = envint("SLUICE_UPSTREAM_MAX_CONNECTIONS", 1000)
# How often each process re-reads keys, routes, backends and prices from the database.
SLUICE_CONFIG_REFRESH_S = envfloat("SLUICE_CONFIG_REFRESH_S", 5.0)
# How often each backend's /health is probed.
SLUICE_HEALTH_INTERVAL_S = envfloat("SLUICE_HEALTH_INTERVAL_S", 5.0)
# Call log: buffered in memory, written in batches off the request path.
SLUICE_LOG_FLUSH_INTERVAL_S = envfloat("SLUICE_LOG_FLUSH_INTERVAL_S", 1.0)
SLUICE_LOG_BATCH_SIZE = envint("SLUICE_LOG_BATCH_SIZE", 500)
# At shutdown, how long to keep trying the database before leaving what is left to the journal.
SLUICE_LOG_SHUTDOWN_FLUSH_S = envfloat("SLUICE_LOG_SHUTDOWN_FLUSH_S", 5.0)
# The call log's journal (analytics/journal.py): every record is on local disk before the app
# has its answer. fsync "none" survives a process crash; "interval" also survives power loss
# but for the last SLUICE_JOURNAL_FSYNC_S. Segments rotate by size and go once written.
SLUICE_JOURNAL_DIR = Path(envstr("SLUICE_JOURNAL_DIR", str(VAR_DIR / "journal")))
SLUICE_JOURNAL_FSYNC = envstr("SLUICE_JOURNAL_FSYNC", "none")
if SLUICE_JOURNAL_FSYNC not in ("none", "interval"):
    raise ImproperlyConfigured(f"SLUICE_JOURNAL_FSYNC must be none or interval, "
                               f"not {SLUICE_JOURNAL_FSYNC!r}")
SLUICE_JOURNAL_FSYNC_S = envfloat("SLUICE_JOURNAL_FSYNC_S", 1.0)
SLUICE_JOURNAL_SEGMENT_BYTES = envint("SLUICE_JOURNAL_SEGMENT_BYTES", 4 * 1024 * 1024)
# How often each process looks for segments left by dead processes (and at start-up).
SLUICE_JOURNAL_SCAN_S = envfloat("SLUICE_JOURNAL_SCAN_S", 30.0)
SLUICE_CALL_RETENTION_DAYS = envint("SLUICE_CALL_RETENTION_DAYS", 30)
# Minute and hour rollups (analytics/rollups.py) outlive the calls they sum.
SLUICE_ROLLUP_RETENTION_DAYS = envint("SLUICE_ROLLUP_RETENTION_DAYS", 90)
# Embedded simulated pool started by `make run`.
SLUICE_SIM_BACKENDS = envint("SLUICE_SIM_BACKENDS", 2)
SLUICE_SIM_BASE_PORT = envint("SLUICE_SIM_BASE_PORT", 8101)
SLUICE_SIM_MODEL = envstr("SLUICE_SIM_MODEL", "sim-llama-3-8b")
# A smaller, faster simulated model on the port after the pool's, for small-model routing
# ("" leaves it out).
SLUICE_SIM_SMALL_MODEL = envstr("SLUICE_SIM_SMALL_MODEL", "sim-llama-3-1b")
# Past this many unwritten records (database down), the queue is left to the journal on disk.
SLUICE_LOG_MAX_PENDING = envint("SLUICE_LOG_MAX_PENDING", 100_000)

# --- Prometheus /metrics (config/metrics.py) -----------------------------------------------
# Every process of the gateway writes its numbers to files in this directory and /metrics adds
# them up (prometheus_client's multi-process mode, which reads PROMETHEUS_MULTIPROC_DIR: set
# here, over any inherited value, so a child gateway with its own var dir keeps its own).
# `make run` empties it at each start; under another supervisor, empty it before starting.
SLUICE_METRICS_DIR = Path(envstr("SLUICE_METRICS_DIR") or VAR_DIR / "prometheus")
SLUICE_METRICS_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(SLUICE_METRICS_DIR)
# /metrics without the master key or a staff session (a scraper on a private network).
SLUICE_METRICS_PUBLIC = envbool("SLUICE_METRICS_PUBLIC", False)
# How often each web process publishes its pool gauges (breakers, in-flight, queues, load).
SLUICE_METRICS_GAUGES_S = envfloat("SLUICE_METRICS_GAUGES_S", 1.0)

# --- Semantic cache (proxy/semantic.py, proxy/embedder.py, proxy/nearmiss.py) ---------------
# Cosine similarity a stored question must reach before the near-miss check looks at it; a
# route's own semantic_threshold overrides it. From `manage.py semantic_eval` on
# tests/data/semantic_pairs.jsonl (target: false hits <= 0.5 %): the sweep's pick is 0.72;
# 0.80 keeps a margin for near-misses the check does not know, at 3.5 points of hit rate
# (the held-out pairs hit as often at both). See the README's "Semantic cache".
SLUICE_SEMANTIC_THRESHOLD = envfloat("SLUICE_SEMANTIC_THRESHOLD", 0.80)
# Embedder threads, and the jobs that may wait for them before a lookup is skipped instead.
SLUICE_SEMANTIC_THREADS = envint("SLUICE_SEMANTIC_THREADS", 1)
SLUICE_SEMANTIC_MAX_WAITING = envint("SLUICE_SEMANTIC_MAX_WAITING", 4)
# Candidates above the threshold that the near-miss check looks at, best first.
SLUICE_SEMANTIC_CANDIDATES = envint("SLUICE_SEMANTIC_CANDIDATES", 5)
# How often each process pulls entries other processes stored (Redis), in seconds.
SLUICE_SEMANTIC_SYNC_S = envfloat("SLUICE_SEMANTIC_SYNC_S", 1.0)

# --- Batch API (batch/) --------------------------------------------------------------------
# /v1/files and /v1/batches: the largest uploaded file, the Celery queue its tasks
# go to, requests in flight at once per batch, and how long to wait before looking again
# while a backend of the batch's model has requests waiting (vLLM's num_requests_waiting).
SLUICE_BATCH_MAX_FILE_BYTES = envint("SLUICE_BATCH_MAX_FILE_BYTES", 100 * 1024 * 1024)
SLUICE_BATCH_QUEUE = envstr("SLUICE_BATCH_QUEUE", "batch")
SLUICE_BATCH_CONCURRENCY = envint("SLUICE_BATCH_CONCURRENCY", 4)
SLUICE_BATCH_BACKOFF_S = envfloat("SLUICE_BATCH_BACKOFF_S", 1.0)
# The share of a batch call's cost the operator waives (OpenAI's batch API: 0.5), since batch
# work fills idle capacity; it shows as its own savings cause, "batch". 0: none.
SLUICE_BATCH_DISCOUNT = envfloat("SLUICE_BATCH_DISCOUNT", 0.0)

# --- Alerts (alerts/) ------------------------------------------------------------------------
# Where every rule without its own webhook POSTs its fire and resolve events ("": the log
# only), and how: timeout per attempt, attempts, and the first backoff (doubling after it).
SLUICE_ALERT_WEBHOOK_URL = envstr("SLUICE_ALERT_WEBHOOK_URL")
SLUICE_ALERT_WEBHOOK_TIMEOUT_S = envfloat("SLUICE_ALERT_WEBHOOK_TIMEOUT_S", 3.0)
SLUICE_ALERT_WEBHOOK_ATTEMPTS = envint("SLUICE_ALERT_WEBHOOK_ATTEMPTS", 3)
SLUICE_ALERT_WEBHOOK_BACKOFF_S = envfloat("SLUICE_ALERT_WEBHOOK_BACKOFF_S", 0.5)
# The address operators reach Sluice at, for the links in notifications ("": relative links).
SLUICE_PUBLIC_URL = envstr("SLUICE_PUBLIC_URL")
