"""Files that several processes may create at the same moment."""

from __future__ import annotations

import os
from pathlib import Path


def write_once(path: Path, data: bytes, mode: int) -> None:
    """Writes `path` unless it exists: the first writer wins, the others keep its file
    (written aside, then hard-linked into place, so no reader sees half a file)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(data)
    os.chmod(temporary, mode)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
