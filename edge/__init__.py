"""webordinary edge: one aiohttp server that fronts previews, the control API and operations."""

__version__ = "0.1.0"
