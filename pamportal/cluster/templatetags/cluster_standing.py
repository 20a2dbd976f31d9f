"""``{% node_standing as standing %}``: this node's place in a cluster, for pages of
other apps (the dashboard) that show it without asking their views for it."""

from __future__ import annotations

from django import template

from pamportal.cluster.selectors import node_standing as node_standing_selector

register = template.Library()


@register.simple_tag
def node_standing(role: str | None = None):
    """``role``: the node's role when the page has it already."""
    return node_standing_selector(role=role or None)
