"""First-run set-up for `make run`: an admin, the simulated pool, a `default` route and a key.

Idempotent: it only creates what is missing, so later runs leave an operator's edits alone.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from proxy.models import ApiKey, Backend, Price, Route, key_hash

ADMIN_USER = "admin"


@dataclass
class BootstrapInfo:
    admin_password: str | None  # None: unchanged since an earlier run
    api_key: str | None  # None: the first-run key is gone; make one in the admin


def _bootstrap_key_file() -> Path:
    return settings.VAR_DIR / "bootstrap-api-key"


@transaction.atomic
def bootstrap(*, sim_urls: list[str]) -> BootstrapInfo:
    password = _admin_ensure()
    if not Backend.objects.exists():
        for i, url in enumerate(sim_urls, start=1):
            Backend.objects.create(name=f"sim-{i}", base_url=url, model=settings.SLUICE_SIM_MODEL)
    if not Route.objects.exists():
        model = Backend.objects.values_list("model", flat=True).first() or settings.SLUICE_SIM_MODEL
        Route.objects.create(name="default", model=model)
        # An illustrative hosted price, so that cost and savings show something until the
        # operator enters real ones in the admin.
        Price.objects.get_or_create(
            model=model, defaults={"input_usd_per_1m": "0.05", "output_usd_per_1m": "0.08"}
        )
    return BootstrapInfo(admin_password=password, api_key=_first_key_ensure())


def _admin_ensure() -> str | None:
    """Create the admin; (re)set its password when SLUICE_ADMIN_PASSWORD says so."""
    User = get_user_model()
    wanted = os.environ.get("SLUICE_ADMIN_PASSWORD")
    user = User.objects.filter(username=ADMIN_USER).first()
    if user is None:
        password = wanted or secrets.token_urlsafe(12)
        User.objects.create_superuser(ADMIN_USER, email="", password=password)
        return password
    if wanted and not user.check_password(wanted):
        user.set_password(wanted)
        user.save(update_fields=["password"])
    return wanted


def _first_key_ensure() -> str | None:
    """The first-run key is kept in var/ (mode 600) so every local run can print it."""
    path = _bootstrap_key_file()
    if path.exists():
        plaintext = path.read_text().strip()
        if ApiKey.objects.filter(key_hash=key_hash(plaintext), is_active=True).exists():
            return plaintext
        return None
    if ApiKey.objects.exists():
        return None
    _, plaintext = ApiKey.issue(name="first key")
    path.write_text(plaintext + "\n")
    path.chmod(0o600)
    return plaintext
