from django.apps import AppConfig


class SluiceConfig(AppConfig):
    """The project itself as an app, for what belongs to no other: the start-up checks."""

    name = "config"
    label = "sluice"
    verbose_name = "Sluice"

    def ready(self) -> None:
        from config import checks  # noqa: F401  (registers the system checks)
