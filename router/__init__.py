"""wa-router: one endpoint in front of a fleet of WhatsApp API instances."""

__version__ = "0.1.0"
