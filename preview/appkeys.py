"""Typed application state of the preview supervisor."""

from __future__ import annotations

from aiohttp import web

from preview.supervisor import PreviewSupervisor

PREVIEWS = web.AppKey("previews", PreviewSupervisor)
