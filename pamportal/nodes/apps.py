from django.apps import AppConfig


class NodesConfig(AppConfig):
    name = "pamportal.nodes"
    label = "nodes"
