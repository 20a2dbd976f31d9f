"""Forms of the node pages."""

from pamportal.setup.forms import MekForm

__all__ = ["MekForm"]
