"""tabby-fleet: many Tabby servers, one router."""

__version__ = "0.1.0"
