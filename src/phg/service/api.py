"""(being written: see phg.service.app)"""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes(ctx) -> list[BaseRoute]:
    return []
