"""What many tests share, so each is written once: polling, routes, upstreams and raw HTTP.

- :mod:`tests.support.polling`   wait until a condition holds (bounded, with a clear failure message)
- :mod:`tests.support.routes`    point a session of a running edge at an upstream
- :mod:`tests.support.upstreams` small HTTP upstreams (recording, echoing, raw TCP) on 127.0.0.1
- :mod:`tests.support.websocket` WebSocket upstreams (echo, scriptable) and a raw WebSocket client
- :mod:`tests.support.rawhttp`   build, send and read raw HTTP/1.x on a socket
"""
