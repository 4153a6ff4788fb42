"""edge: the community camera appliance."""

__version__ = "0.1.0"
