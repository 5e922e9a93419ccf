"""First-run set-up for `make run`: an admin, the simulated pool (a main and a small model), a
`default` route with every cost step on, prices, and a key.

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


# Illustrative prices, so that cost and savings show something until the operator enters real
# ones: the baseline is the hosted model the team would otherwise call.
BASELINE_MODEL = "gpt-4o"
PRICES = {  # $ per 1M tokens, input / output
    BASELINE_MODEL: ("2.50", "10.00"),
}
SIM_PRICES = ("0.20", "0.20"), ("0.05", "0.08")  # hosted equivalents: main model, small model
# Self-hosted cost of each simulated server ($ per hour): main model's, small model's. Low, so
# that the light traffic of `make demo` shows a self-hosting saving; a real GPU's price only
# beats hosted tokens at high utilisation (the dashboard shows a negative saving otherwise).
SIM_GPU_USD_PER_HOUR = "0.02", "0.01"


@transaction.atomic
def bootstrap(*, pool) -> BootstrapInfo:
    """`pool`: the simulated servers (`config.run.SimSpec`: name, url, model); the first one's
    model is the main model, a different model among them the small one."""
    password = _admin_ensure()
    main_model = pool[0].model if pool else settings.SLUICE_SIM_MODEL
    small_model = next((s.model for s in pool if s.model != main_model), "")
    if not Backend.objects.exists():
        for spec in pool:
            small = spec.model == small_model
            Backend.objects.create(
                name=spec.name, base_url=spec.url, model=spec.model,
                gpu_usd_per_hour=SIM_GPU_USD_PER_HOUR[small])
    if not Route.objects.exists():
        model = Backend.objects.values_list("model", flat=True).first() or main_model
        Route.objects.create(
            name="default", model=model, baseline_model=BASELINE_MODEL,
            cache_exact=True, cache_semantic=True, small_model=small_model,
            prompt_token_budget=3000)
        for name, (price_in, price_out) in PRICES.items():
            Price.objects.get_or_create(
                model=name, defaults={"input_usd_per_1m": price_in, "output_usd_per_1m": price_out})
        for name, (price_in, price_out) in zip((main_model, small_model), SIM_PRICES,
                                               strict=True):
            if name:
                Price.objects.get_or_create(model=name, defaults={
                    "input_usd_per_1m": price_in, "output_usd_per_1m": price_out})
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
