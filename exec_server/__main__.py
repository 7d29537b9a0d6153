"""``python -m exec_server``: the ``exec-server`` command."""

from exec_server.cli import console_main

if __name__ == "__main__":
    console_main()
