"""The control socket: how clients (editor plugins, scripts, the CLI) talk to the daemon.

    protocol   pure framing and parsing of the newline-delimited JSON protocol (no I/O)
    server     the daemon's asyncio Unix-socket server (peer checks, subscriptions)
    client     a tiny blocking client for the CLI and scripts

This package imports nothing on purpose: the CLI imports `lmkeeperd.control.client` on
every call and must not pay for asyncio or the server.
"""
