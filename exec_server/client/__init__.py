"""The blocking client: transports, the JSON-RPC endpoint, recovery, and the subprocess-like API.

Imports :mod:`exec_server.protocol` and :mod:`exec_server.common`, never the
server or the command line.  Start at :class:`exec_server.client.api.Client`.
"""
