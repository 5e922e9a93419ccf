from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Gateway configuration"

    def ready(self) -> None:
        from proxy import signals  # noqa: F401  (connects the config-reload receivers)
