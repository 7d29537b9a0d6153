"""What the server and the client both use on top of the protocol: telemetry, tree kill, WebSocket framing.

Imports only :mod:`exec_server.protocol`; the server and the client import
this layer, never each other.
"""
