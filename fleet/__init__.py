"""tabby-fleet: settings and the pure decisions (routing, errors); imports nothing from router/ or apps/."""

__version__ = "0.1.0"
