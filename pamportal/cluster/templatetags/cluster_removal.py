"""``{% node_removal as removal %}``: this node's removal from its cluster (or None),
for the banner every page shows and for pages of other apps (the join page)."""

from __future__ import annotations

from django import template

from pamportal.cluster.removed import removal_current, removal_current_for

register = template.Library()


@register.simple_tag(takes_context=True)
def node_removal(context):
    """Read once per page: the banner and the page body share the answer."""
    request = context.get("request")
    return removal_current_for(request) if request is not None else removal_current()
