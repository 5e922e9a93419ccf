"""Start-up checks of a production configuration (SLUICE_ENV=production).

Django runs system checks before `migrate`, `check` and most commands; deploy/gunicorn.conf.py
runs `manage.py check` before the web tier starts and the systemd units before each service,
so a production process refuses to start on SQLite, without Redis, or without a secret key,
with a message that says what to set. Development (`make run`, `make test`) is not checked.
"""
from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

_HINT_SECRET = ('generate one with: python -c "import secrets; print(secrets.token_urlsafe(50))"'
                " and keep it in the environment (e.g. /etc/sluice/sluice.env)")


@register
def production_check(app_configs=None, **kwargs) -> list[Error]:
    """Errors that keep a production process from starting; none outside production."""
    if not settings.PRODUCTION:
        return []
    return [*_database_errors(), *_secret_key_errors(), *_other_errors()]


def _database_errors() -> list[Error]:
    errors = []
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        errors.append(Error(
            "SLUICE_ENV=production refuses SQLite: several web workers, Celery and beat "
            "need one PostgreSQL.",
            hint="set DATABASE_URL=postgres://USER:PASSWORD@HOST:5432/NAME",
            id="sluice.E001"))
    if not settings.REDIS_URL:
        errors.append(Error(
            "SLUICE_ENV=production needs Redis: without it rate limits and caches are per "
            "process and Celery's broker is a local folder.",
            hint="set REDIS_URL=redis://HOST:6379/0", id="sluice.E002"))
    return errors


def _secret_key_errors() -> list[Error]:
    try:
        key = settings.SECRET_KEY
    except ImproperlyConfigured:  # Django refuses an empty SECRET_KEY on first use
        key = ""
    if not key:
        return [Error("SLUICE_ENV=production needs SLUICE_SECRET_KEY (no key file is "
                      "generated in production).", hint=_HINT_SECRET, id="sluice.E003")]
    # Django's own test for a weak key (security.W009), an error here.
    if len(key) < 50 or len(set(key)) < 5 or key.startswith("django-insecure-"):
        return [Error("SLUICE_SECRET_KEY is too weak: it needs 50 or more characters, 5 or "
                      "more of them different.", hint=_HINT_SECRET, id="sluice.E003")]
    return []


def _other_errors() -> list[Error]:
    errors = []
    if settings.DEBUG:
        errors.append(Error("SLUICE_ENV=production refuses SLUICE_DEBUG=1: error pages would "
                            "show settings and code to anyone.", hint="unset SLUICE_DEBUG",
                            id="sluice.E004"))
    if not settings.ALLOWED_HOSTS:
        errors.append(Error("SLUICE_ENV=production needs SLUICE_ALLOWED_HOSTS: the host names "
                            "clients reach Sluice at.",
                            hint="e.g. SLUICE_ALLOWED_HOSTS=sluice.example.com,127.0.0.1",
                            id="sluice.E005"))
    return errors


@register(deploy=True)
def static_files_check(app_configs=None, **kwargs) -> list[Warning]:
    """`check --deploy`: production serves collected static files only."""
    if not settings.PRODUCTION or (settings.STATIC_ROOT / "staticfiles.json").exists():
        return []
    return [Warning(f"static files are not collected in {settings.STATIC_ROOT}: the admin and "
                    "the dashboard would answer 500.",
                    hint="run: python manage.py collectstatic --noinput", id="sluice.W001")]
