"""``python -m exec_server``: the ``exec-server`` command."""

import sys

from exec_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
