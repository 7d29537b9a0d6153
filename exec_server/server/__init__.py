"""The server: listener and transports, per-connection dispatch, handlers, sessions, processes and files.

Imports :mod:`exec_server.protocol` and :mod:`exec_server.common`, never the
client or the command line.  :func:`exec_server.server.app.make_server` is the
entry point.
"""
