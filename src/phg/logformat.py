"""`phg --log-format json`: one JSON object per log line, for journald, Loki, Elasticsearch and the like.

Fields: `time` (UTC, RFC 3339 with milliseconds), `level`, `logger`, `message`, and `exception` (the
traceback) when there is one. The message is the same text the plain format prints: what phg logs at INFO
holds no measured value and no token, whatever the format. JSON escapes every control character (and,
with ASCII output, every non-ASCII one), so a server's words cannot reach a terminal as escape sequences.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """A logging formatter that renders each record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)
