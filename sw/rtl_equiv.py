"""Prove the generated RTL equal to reference netlists with Yosys (equiv_make / equiv_simple / equiv_induct).

By default: the configurations of ``qift_hw.verify.equiv.REFERENCE_TOPS`` against ``sim/data/rtl_reference``.
``--reference DIR`` takes another folder of ``<top>.v`` or ``<top>.v.gz`` files and checks every top in it (the
top is rebuilt from its file name). Exits 1 if any design is not proven equal.

    .venv/bin/python sw/rtl_equiv.py [--reference DIR] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qift_hw.verify.equiv import REFERENCE_TOPS, check_against_reference, reference_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=None, help="folder of reference netlists")
    ap.add_argument("--only", default="", help="comma-separated top names (default: all in the folder)")
    args = ap.parse_args()
    folder = args.reference or reference_dir()
    if args.only:
        names = args.only.split(",")
    elif args.reference:
        names = sorted({p.name.split(".v")[0] for p in folder.glob("*.v*")})
    else:
        names = list(REFERENCE_TOPS)
    bad = 0
    for name in names:
        res = check_against_reference(name, folder)
        bad += not res.equivalent
        print(f"{name:40s} {'equal' if res.equivalent else 'NOT PROVEN'}: {res.proven}/{res.cells} $equiv cells "
              f"proven, {res.seconds:.1f} s", flush=True)
    print(f"{len(names) - bad} of {len(names)} designs proven equal to {folder}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
