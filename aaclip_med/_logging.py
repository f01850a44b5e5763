"""Logging set-up for the command line only: the library never adds handlers."""

from __future__ import annotations

import logging
import re

_WARNING_TEXT = re.compile(r"^.*?:\d+: (\w+): (.*?)\n", re.DOTALL)


class _OneFormat(logging.Filter):
    """Captured ``warnings`` read like log records ``WARNING UserWarning: text``, not ``file:line: ...`` + code."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            match = _WARNING_TEXT.match(record.getMessage())
            if match:
                record.name, record.msg, record.args = match.group(1), match.group(2), None
        return True


def configure_logging(verbosity: int = 0) -> None:
    """Send aaclip-med's log records to stderr at a level chosen by ``-v``/``-q`` counts.

    Args:
        verbosity: 0 shows warnings and progress notes (INFO), 1+ shows debug records, -1 only errors.
    """
    level = {-1: logging.ERROR, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_OneFormat())
    logging.captureWarnings(True)
    for name in ("aaclip_med", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False  # some dependencies configure the root logger; do not print records twice
    # Dependencies that log through the root logger (open_clip's "No pretrained weights loaded") would make
    # logging call basicConfig() and print despite -q: give root our handler, at WARNING at most.
    root_handler = logging.StreamHandler()
    root_handler.setFormatter(handler.formatter)
    root_handler.setLevel(max(level, logging.WARNING))
    root_handler.set_name("aaclip_med")
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "aaclip_med"] + [root_handler]
