"""Logging set-up for the command line only: the library never adds handlers."""

from __future__ import annotations

import logging


def configure_logging(verbosity: int = 0) -> None:
    """Send aaclip-med's log records to stderr at a level chosen by ``-v``/``-q`` counts.

    Args:
        verbosity: 0 shows warnings and progress notes (INFO), 1+ shows debug records, -1 only errors.
    """
    level = {-1: logging.ERROR, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in ("aaclip_med", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False  # some dependencies configure the root logger; do not print records twice
