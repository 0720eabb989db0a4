"""Formal equivalence of two Verilog designs with Yosys: the generated RTL against a reference netlist.

Both designs are read, their processes lowered and their hierarchies flattened, each into its own Yosys design
(the two may use the same submodule names), then ``equiv_make`` pairs their ports and the signals of the same
name (the registers of the protocol keep their names across a refactor), ``equiv_struct`` merges what is built
the same way, ``equiv_simple -seq`` proves each pair on its cone (looking back a few cycles) and ``equiv_induct``
proves the remaining sequential pairs by induction over all of them at once. Equal means every pair is proven:
same outputs in every cycle from any common state of the paired registers (so in particular from reset).

Pairing Amaranth's numbered temporaries too (``$5``, ``w$28``) makes nearly identical netlists quick to prove but
fails on unrelated temporaries of the same name, so a check first pairs every name and, if some pair is left
unproven, runs again pairing named signals only. Either way only proven pairs count: extra pairs cannot make
different designs pass.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qift_hw.core.errors import QiftError

SEQ_DEPTH = 4
"""Cycles ``equiv_simple`` looks back before it leaves a pair to induction."""
TIMEOUT_S = 1800


@dataclass(frozen=True)
class EquivResult:
    """Outcome of one check: the $equiv cells Yosys built and how many it proved."""

    top: str
    cells: int
    proven: int
    seconds: float
    numbered_paired: bool = False
    """Whether the proof paired the numbered temporaries too (the first, quicker attempt)."""

    @property
    def equivalent(self) -> bool:
        """Every paired signal proven (and there were pairs: the top's outputs at least)."""
        return self.cells > 0 and self.proven == self.cells


def _load(path: Path, top: str, name: str, pair_numbered: bool) -> list[str]:
    """Commands reading one design into its own stash. Unless ``pair_numbered``, names with a ``$`` (Amaranth's
    and Yosys' numbered temporaries) are made private and renumbered apart, so equiv_make pairs only named signals
    (ports, the protocol's registers), never two unrelated temporaries that happen to share a number."""
    hide = [] if pair_numbered else [f"rename -hide {top}/w:*\\$*", f"rename -enumerate -pattern ${name}_% {top}"]
    return [f"read_verilog {path}", f"hierarchy -check -top {top}", "proc", "flatten", "opt_clean", *hide,
            f"rename {top} {name}", f"design -stash {name}_design"]


def equiv_script(gold: Path, gate: Path, top: str, seq: int = SEQ_DEPTH, pair_numbered: bool = False) -> str:
    """The Yosys commands proving ``gate`` (Verilog file) equal to ``gold``, both with top module ``top``."""
    lines = _load(gold, top, "gold", pair_numbered) + _load(gate, top, "gate", pair_numbered) + [
        "design -copy-from gold_design -as gold gold", "design -copy-from gate_design -as gate gate",
        "equiv_make gold gate equiv", "hierarchy -top equiv", "equiv_struct", f"equiv_simple -seq {seq}",
        "equiv_induct", "equiv_status",
    ]
    return "\n".join(lines) + "\n"


def check_equivalent(gold: Path | str, gate: Path | str, top: str, yosys: list[str] | None = None,
                     seq: int = SEQ_DEPTH) -> EquivResult:
    """Prove the design in Verilog file ``gate`` equal to the one in ``gold`` (same top module name): first pairing
    every name, then, if that leaves a pair unproven, pairing named signals only."""
    from qift_hw.rtl.area import find_yosys

    cmd = yosys or find_yosys()
    quick = _run_check(gold, gate, top, cmd, seq, pair_numbered=True)
    if quick.equivalent:
        return quick
    full = _run_check(gold, gate, top, cmd, seq, pair_numbered=False)
    return EquivResult(full.top, full.cells, full.proven, quick.seconds + full.seconds)


def _run_check(gold: Path | str, gate: Path | str, top: str, cmd: list[str], seq: int,
               pair_numbered: bool) -> EquivResult:
    import time

    with tempfile.TemporaryDirectory(prefix="qift_equiv_") as tmp:
        script = Path(tmp) / "equiv.ys"
        script.write_text(equiv_script(Path(gold).resolve(), Path(gate).resolve(), top, seq, pair_numbered))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd + ["-q", "-l", str(Path(tmp) / "log"), "-s", str(script)], capture_output=True,
                                  text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise QiftError(f"Yosys equivalence check of {top} ran over {TIMEOUT_S} s; check a smaller "
                            "configuration") from None
        log = (Path(tmp) / "log").read_text() if (Path(tmp) / "log").exists() else proc.stdout
    if proc.returncode != 0:
        tail = (proc.stderr or log).strip().splitlines()[-1:] or ["no output"]
        raise QiftError(f"Yosys could not check {top}: {tail[0]}")
    found = re.findall(r"Found (\d+) \$equiv cells in equiv", log)
    proven = re.findall(r"Of those cells (\d+) are proven and (\d+) are unproven", log)
    if not found:
        raise QiftError(f"Yosys equivalence log of {top} has no $equiv count; is this Yosys 0.9 or newer?")
    cells = int(found[-1])
    return EquivResult(top, cells, int(proven[-1][0]) if proven else cells, time.perf_counter() - t0,
                       pair_numbered)


REFERENCE_DIR = Path("data") / "rtl_reference"
"""Reference netlists (gzipped Verilog, one per top), relative to the bench folder (``simulate.sim_dir()``): the
designs as generated before the vector ports became array layouts and the arrays were built from ``MacCore``."""

REFERENCE_TOPS = (
    *(f"qift_pe_{k}_a32" for k in ("pot_mnz", "mnz", "pm12", "std", "int4", "int8")),
    *(f"qift_array_{df}_{size}" for df in ("ws", "os")
      for size in ("2x3_pot_mnz_a32", "4x4_pot_mnz_a32", "3x2_std_a20", "3x2_int4_a20")),
    "qift_hadamard_24_i16", "qift_hadamard_q4_16_i16",
)
"""The configurations checked: every PE kind, both dataflows at two sizes (a symmetric set, the asymmetric ``std``
and a multiplier baseline), the Hadamard unit without (K = 3) and with (K = 1) the INT4 quantizer."""


def top_for(name: str):
    """The ``Top`` that ``qift_hw.rtl.generate`` names ``name`` (``qift_pe_<kind>_a<acc>``,
    ``qift_array_<df>_<R>x<C>_<kind>_a<acc>``, ``qift_hadamard[_q4]_<n>_i<in_bits>``)."""
    from qift_hw.rtl.generate import array_top, hadamard_top, pe_top

    if m := re.fullmatch(r"qift_pe_(\w+)_a(\d+)", name):
        return pe_top(m[1], int(m[2]))
    if m := re.fullmatch(r"qift_array_(ws|os)_(\d+)x(\d+)_(\w+)_a(\d+)", name):
        return array_top(m[1], int(m[2]), int(m[3]), m[4], int(m[5]))
    if m := re.fullmatch(r"qift_hadamard_(q4_)?(\d+)_i(\d+)", name):
        return hadamard_top(int(m[2]), int(m[3]), bool(m[1]))
    raise QiftError(f"{name!r} is not a generated top name (qift_pe_..., qift_array_..., qift_hadamard_...)")


def reference_dir() -> Path:
    """Folder of the reference netlists (``sim/data/rtl_reference``)."""
    from qift_hw.verify.simulate import sim_dir

    return sim_dir() / REFERENCE_DIR


def check_against_reference(name: str, reference: Path | str, yosys: list[str] | None = None) -> EquivResult:
    """Prove today's generated ``name`` equal to ``<reference>/<name>.v`` (or ``.v.gz``)."""
    import gzip

    from qift_hw.rtl.generate import write_top

    ref = Path(reference) / f"{name}.v"
    packed = ref.with_suffix(".v.gz")
    if not ref.exists() and not packed.exists():
        raise QiftError(f"no reference netlist {ref} (or .v.gz)")
    with tempfile.TemporaryDirectory(prefix="qift_ref_") as tmp:
        if not ref.exists():
            ref = Path(tmp) / "reference" / f"{name}.v"
            ref.parent.mkdir()
            ref.write_bytes(gzip.decompress(packed.read_bytes()))
        gate = write_top(top_for(name), tmp)
        return check_equivalent(ref, gate, name, yosys)
