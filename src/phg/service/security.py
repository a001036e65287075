"""(being written: see phg.service.app)"""

from __future__ import annotations


def protect(app, ctx):
    return app
