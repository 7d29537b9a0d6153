"""The protocol layer, shared by both ends and sans-IO: text in, message objects out, and back.

It imports no socket, thread or subprocess module and nothing else of
``exec_server`` (``tests/test_structure.py`` checks), so every module here can
be tested with plain values.
"""
