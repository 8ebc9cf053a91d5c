"""The control socket: how clients (editor plugins, scripts, the CLI) talk to the daemon.

    protocol     pure framing and parsing of the newline-delimited JSON protocol (no I/O)
    server       the daemon's asyncio Unix-socket server: connections, requests, limits
    handler      what the server needs from the daemon (RequestHandler, Connection)
    peer         the peer's uid and pid, from the kernel
    socket_file  the socket file: path checks, folder modes, stale sockets, removal
    socket_record  where the socket is, recorded per config file for the CLI
    subscribers  subscribers' bounded queues, the events_dropped marker
    client       a tiny blocking client for the CLI and scripts

This package imports nothing on purpose: the CLI imports `lmkeeperd.control.client` on
every call and must not pay for asyncio or the server.
"""
