"""The two rules every install starts with: P99 latency above 10 s and error rate above 1 %,
over 5 minutes, for 60 s. Created once; an operator may edit or delete them afterwards."""
from django.db import migrations

DEFAULT_RULES = [
    {"name": "P99 latency above 10 s", "metric": "p99_latency", "threshold": 10_000.0},
    {"name": "Error rate above 1 %", "metric": "error_rate", "threshold": 0.01},
]


def rules_create(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for rule in DEFAULT_RULES:
        AlertRule.objects.get_or_create(name=rule["name"], defaults={
            **rule, "comparison": "gt", "window_minutes": 5, "for_s": 60})


def rules_delete(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    AlertRule.objects.filter(name__in=[r["name"] for r in DEFAULT_RULES]).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial")]

    operations = [migrations.RunPython(rules_create, rules_delete)]
