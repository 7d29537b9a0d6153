"""The file system helper: runs one fs operation, optionally inside a sandbox.

Runs as its own process (``python -m fs_helper``): one JSON request on stdin,
one JSON response on stdout (PROTOCOL.md section 10).  It never imports
``exec_server``; the server imports :mod:`fs_helper.operations` to run the
same operations in-process when no sandbox restricts them.
"""
