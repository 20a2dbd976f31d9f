from django.apps import AppConfig


class ClusterConfig(AppConfig):
    name = "pamportal.cluster"
    label = "cluster"
