from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AnalyticsConfig(AppConfig):
    name = "analytics"
    verbose_name = "Analytics"

    def ready(self) -> None:
        from analytics.partitions import partitions_after_migrate

        # Once per migrate (sender: this app): today's call partitions on a fresh install.
        post_migrate.connect(partitions_after_migrate, sender=self,
                             dispatch_uid="analytics.partitions_after_migrate")
