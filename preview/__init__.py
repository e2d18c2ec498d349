"""Astro dev-server supervisor: one preview per conversation thread."""
