"""Debian's Chromium and how it is launched: one definition for the browser tests and bench/.

Chromium resolves the public preview names (``edit.amelia.webordinary.com``, its
subdomains and ``<session>--`` host-mode names) to 127.0.0.1, so a page is opened
exactly as a site owner's browser would open it, yet reaches the local edge.
"""

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
PUBLIC_HOST = "edit.amelia.webordinary.com"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {PUBLIC_HOST} 127.0.0.1, MAP *.{PUBLIC_HOST} 127.0.0.1, MAP *--{PUBLIC_HOST} 127.0.0.1",
]
