"""A compiler wrapper that caches Verilator's own runtime objects across designs (a tiny ccache).

Verilator's Makefile prefixes every C++ compile with ``$(OBJCACHE)``. The runtime files (``verilated*.cpp`` from
Verilator's include folder) are the same for every design and take most of a cold build, so this wrapper keys
their objects on the full compile command and the source's size and mtime, and copies them (with the ``-MMD``
dependency file) from the cache instead of compiling again. Every other compile runs unchanged.
Usage (what ``simulate.build`` sets): ``OBJCACHE="python -m qift_hw.verify.objcache"`` with ``QIFT_OBJCACHE_DIR``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE_ENV = "QIFT_OBJCACHE_DIR"


def _cacheable(args: list[str]) -> tuple[Path, Path] | None:
    """(source, object) when this is a compile of a Verilator runtime file, else None."""
    if "-c" not in args or "-o" not in args:
        return None
    obj = Path(args[args.index("-o") + 1])
    sources = [Path(a) for a in args if a.endswith(".cpp")]
    if len(sources) != 1 or not obj.name.startswith("verilated"):
        return None
    src = sources[0]
    if not src.name.startswith("verilated") or "include" not in src.parts:
        return None
    return src, obj


def main(argv: list[str]) -> int:
    """Run or replay one compile command ``argv``."""
    cache_dir = os.environ.get(CACHE_ENV)
    hit = _cacheable(argv) if cache_dir else None
    if hit is None:
        return subprocess.call(argv)
    src, obj = hit
    st = src.stat()
    key = hashlib.sha256("\0".join(argv + [str(st.st_size), str(st.st_mtime_ns)]).encode()).hexdigest()[:20]
    entry = Path(cache_dir) / key
    dep = obj.with_suffix(".d")
    if (entry / obj.name).exists():
        shutil.copyfile(entry / obj.name, obj)
        if (entry / dep.name).exists():
            shutil.copyfile(entry / dep.name, dep)
        return 0
    rc = subprocess.call(argv)
    if rc == 0:
        tmp = Path(cache_dir) / f".{key}.{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(obj, tmp / obj.name)
        if dep.exists():
            shutil.copyfile(dep, tmp / dep.name)
        try:
            os.replace(tmp, entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
