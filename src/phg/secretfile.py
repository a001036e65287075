"""Files that hold secrets (private keys, client secrets, registration tokens): readable by their
owner only, or refused; written atomically and never readable by others, even for a moment."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from phg.errors import ConfigError


def require_private(path: Path | str, what: str) -> None:
    """Refuse a secret file that group or others can read (phg's rule: private keys are mode 0600 or refused)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
                          f"run: chmod 600 {path}")


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` with `text` atomically: a new 0600 file made exclusively beside it (no symlink
    can redirect it), synced, then given `mode` and renamed over the old one."""
    import tempfile  # here: reading a secret file (what most commands do) does not need it

    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(name, mode)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
