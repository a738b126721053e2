"""Loaded by the launched test processes (this folder is put first on PYTHONPATH): records every
file a non-zero rank opens for writing, creates or removes under LMTUNE_AUDIT_ROOT, into
LMTUNE_AUDIT_DIR/rank<R>.txt (outside the run directory), so a test can check who wrote what."""

import atexit
import os
import sys

_ROOT = os.environ.get("LMTUNE_AUDIT_ROOT")
_OUT = os.environ.get("LMTUNE_AUDIT_DIR")
_RANK = os.environ.get("RANK")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

if _ROOT and _OUT and _RANK is not None:
    _root = os.path.realpath(_ROOT)
    _seen: set[str] = set()

    def _inside(path) -> str | None:
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        return full if full.startswith(_root + os.sep) or full == _root else None

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
            found = _inside(path) if writes and not isinstance(path, int) else None
        elif event in ("os.mkdir", "os.remove", "os.rename", "os.rmdir", "shutil.rmtree", "os.truncate"):
            found = _inside(args[0])
        else:
            return
        if found:
            _seen.add(os.path.relpath(found, _root))

    def _dump():
        with open(os.path.join(_OUT, f"rank{_RANK}.txt"), "w") as f:
            f.write("\n".join(sorted(_seen)))

    sys.addaudithook(_hook)
    atexit.register(_dump)
