"""Typed application state (aiohttp ``web.AppKey``), shared by the edge's modules."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from edge.hostpolicy import HostPolicy
from edge.proxylog import ProxyLog
from edge.routing import SessionTable
from edge.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SESSIONS = web.AppKey("sessions", SessionTable)
HOSTS = web.AppKey("hosts", HostPolicy)
PROXY_LOG = web.AppKey("proxy_log", ProxyLog)
CLIENT = web.AppKey("client", aiohttp.ClientSession)
STARTED_AT = web.AppKey("started_at", float)
# Set to stop the edge gracefully (idle auto-shutdown); `serve` waits on it alongside SIGTERM/SIGINT.
STOP = web.AppKey("stop", asyncio.Event)
