"""Regenerate the generated blocks of docs/accelerator.md: the architecture-file field table and the W2/W4/W8
figures of the presets (the same numbers `qift-hw estimate --arch ARCH --model MODEL` prints).

    .venv/bin/python sw/accelerator_doc_tables.py [--check]

``--check`` exits 1 when the document differs from what the code gives now (nothing is written).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from qift_hw.core.io import write_text
from qift_hw.core.shapes import load_model_shape
from qift_hw.sim.accelerator import estimate
from qift_hw.sim.arch import load_arch
from qift_hw.study.accel_report import arch_field_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "accelerator.md"
NAMES = {"pot_mnz": "W2 pot_mnz", "int4": "W4 int4", "int8": "W8 int8"}


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def preset_table() -> str:
    out = ["| preset | model | weights | phase | tokens/s | vs W8 | energy uJ/token | bound | PE util | DRAM MB/token |",
           "|---|---|---|---|---:|---:|---:|---|---:|---:|"]
    for arch in ("edge", "hbm"):
        for model in ("smollm2", "llama2-7b"):
            rows = estimate(load_arch(arch), load_model_shape(model))["summary"]
            base = {r["phase"]: r["tokens_per_s"] for r in rows if r["format"] == "int8"}
            for r in rows:
                t = r["tokens_per_s"]
                out.append(f"| {arch} | {r['model']} | {NAMES[r['format']]} | {r['phase']} | {_num(t)} | "
                           f"{t / base[r['phase']]:.2f}x | {_num(r['energy_per_token_uj'])} | {r['bound']} | "
                           f"{100 * r['pe_util']:.1f}% | {r['dram_bytes_per_token'] / 1e6:,.1f} |")
    return "\n".join(out)


def fill(doc: str) -> str:
    for start, end, text in (("<!-- preset figures -->", "<!-- end preset figures -->", preset_table()),
                             ("<!-- field table: generated -->", "<!-- end field table -->", arch_field_table())):
        pat = re.compile(re.escape(start) + r"\n.*?\n" + re.escape(end), re.S)
        if not pat.search(doc):
            raise SystemExit(f"{DOC} lacks the block {start} ... {end}")
        doc = pat.sub(lambda m: f"{start}\n{text}\n{end}", doc)
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the document is stale")
    args = ap.parse_args()
    old = DOC.read_text()
    new = fill(old)
    if args.check:
        print("up to date" if new == old else f"{DOC} is stale: run sw/accelerator_doc_tables.py")
        sys.exit(0 if new == old else 1)
    write_text(DOC, new)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
