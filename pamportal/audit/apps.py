from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "pamportal.audit"
    label = "audit"
