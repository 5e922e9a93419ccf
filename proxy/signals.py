"""Admin edits take effect in this process at once; other processes pick them up within
SLUICE_CONFIG_REFRESH_S through the background refresh."""
from django.core.signals import setting_changed
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from proxy.models import ApiKey, Backend, Price, Route
from proxy.snapshot import snapshot_reload, timeouts_default


@receiver(post_save, sender=ApiKey)
@receiver(post_save, sender=Backend)
@receiver(post_save, sender=Route)
@receiver(post_save, sender=Price)
@receiver(post_delete, sender=ApiKey)
@receiver(post_delete, sender=Backend)
@receiver(post_delete, sender=Route)
@receiver(post_delete, sender=Price)
@receiver(m2m_changed, sender=ApiKey.routes.through)
def config_changed(**kwargs) -> None:
    transaction.on_commit(snapshot_reload)


@receiver(setting_changed)
def settings_changed(*, setting: str, **kwargs) -> None:
    """Tests override settings at run time: drop what was derived from them."""
    if setting.startswith("SLUICE_UPSTREAM_"):
        timeouts_default.cache_clear()
