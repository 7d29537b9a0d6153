"""The command's logging on stderr: its level comes from ``--log-level``, else ``EXEC_SERVER_LOG``, else WARNING."""

import argparse
import logging
import os
import sys
from typing import Callable, Optional

#: The level names both take, any case.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def level_name(text: str) -> str:
    """argparse type of ``--log-level``: a logging level name, any case; returned upper case."""
    if text.upper() not in LEVELS:
        raise argparse.ArgumentTypeError("invalid level %r: %s or %s" % (text, ", ".join(LEVELS[:-1]), LEVELS[-1]))
    return text.upper()


def log_level(given: Optional[str]) -> str:
    """The level of ``--log-level`` (``given``, already checked), else of ``EXEC_SERVER_LOG``, else WARNING.

    Raises:
        ValueError: ``EXEC_SERVER_LOG`` names no level (the message names the variable).
    """
    if given is not None:
        return given
    try:
        return level_name(os.environ.get("EXEC_SERVER_LOG") or "WARNING")
    except argparse.ArgumentTypeError as exc:
        raise ValueError("EXEC_SERVER_LOG: %s" % exc) from None


def configure(given: Optional[str], usage_error: Callable[[str], None]) -> None:
    """Log on stderr at :func:`log_level`; a bad ``EXEC_SERVER_LOG`` goes to ``usage_error`` (which exits, status 2)."""
    try:
        level = log_level(given)
    except ValueError as exc:
        usage_error(str(exc))
        return
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
