"""Debian's nginx for the benchmarks: one process (``master_process off``, so its CPU is one pid's), in a folder of its own.

``proxy_bench.py`` uses it as a static upstream, ``tabs_bench.py`` as a
reference reverse proxy in front of the dev server; each passes its own
``http`` block.
"""

from __future__ import annotations

from pathlib import Path

from processes import Processes

NGINX = Path("/usr/sbin/nginx")
CONF = """
daemon off;
master_process off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  client_body_temp_path {dir}/nginx-tmp;
  proxy_temp_path {dir}/nginx-tmp;
  fastcgi_temp_path {dir}/nginx-tmp;
  uwsgi_temp_path {dir}/nginx-tmp;
  scgi_temp_path {dir}/nginx-tmp;
{http}
}}
"""


def start(procs: Processes, name: str, folder: Path, http: str) -> int:
    """Start nginx with ``http`` (the inside of its ``http`` block) in ``folder``; returns its pid."""
    (folder / "nginx-tmp").mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(CONF.format(dir=folder, http=http))
    return procs.start(name, [str(NGINX), "-p", str(folder), "-c", str(conf)])
