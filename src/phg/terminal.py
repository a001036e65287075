"""Text from servers, made safe for a terminal.

An error description, an OperationOutcome or a SOAP fault may carry escape sequences (ECMA-48:
ESC, CSI, OSC...) that recolour, retitle, hide or rewrite what a person sees. Whatever phg prints
or logs that may hold a peer's words goes through :func:`printable`: control characters are
dropped, except line feed and tab.
"""

from __future__ import annotations

import logging
import re

# C0 controls but TAB and LF, DEL, and the C1 controls (U+0080-U+009F: 8-bit CSI is U+009B).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without control characters (LF and TAB kept)."""
    return _CONTROLS.sub("", text)


class PrintableFormatter(logging.Formatter):
    """A logging formatter whose lines (message and traceback alike) hold no control characters."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))
