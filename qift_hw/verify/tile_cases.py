"""Cases for the accelerator tile (qift_hw.rtl.tile): buffer images, commands, expected outputs and cycles.

A tile case is a list of jobs run back to back on one tile: each job loads words into the buffers (or reuses what
an earlier job loaded), sends one command and drains M x N outputs. The driver functions here check a command
against the tile's buffers (a clear QiftError for a zero dimension, a GEMM larger than the buffers or an
unaligned base) and pack codes and INT4 activations into buffer words. Expected outputs come from
``qift_hw.sim.matmul(kernel="pe")`` and the formats' rule written out (``cases.direct_reference``); expected cycles
from the closed form ``qift_hw.sim.dataflow.gemm_compute("ws", ...)``, never from the tile itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qift_hw.core import formats
from qift_hw.core.errors import QiftError
from qift_hw.rtl.tile import DIM_BITS, STATES, TARGETS, Tile, tile_top

BENCH = "bench_tile"
QUICK_TILE = ("tile_random", "tile_smollm2_reduced", "tile_stream_decode")
"""Cases of the default test group (seconds each); the others are slow."""


@dataclass(frozen=True)
class Command:
    """One GEMM for the tile: dimensions, M chunk rows (0 = all of M) and base addresses in elements (codes,
    activations, outputs), each a whole number of buffer words."""

    M: int
    K: int
    N: int
    m_tile: int = 0
    w_base: int = 0
    a_base: int = 0
    o_base: int = 0


def command_words(tile: Tile, cmd: Command) -> dict:
    """The command's fields as the ``cmd`` stream carries them (word addresses); QiftError if the tile cannot run it."""
    R, C = tile.rows, tile.cols
    for name in ("M", "K", "N"):
        v = getattr(cmd, name)
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise QiftError(f"GEMM dimension {name} must be a positive integer, got {v!r}")
        if v >= 1 << DIM_BITS:
            raise QiftError(f"GEMM dimension {name}={v} does not fit the command's {DIM_BITS} bits")
    if not (0 <= cmd.m_tile < 1 << DIM_BITS):
        raise QiftError(f"m_tile must be 0 (all of M) or a positive row count, got {cmd.m_tile}")
    stream = tile.dataflow == "stream"
    for name, base, unit, what in (("w_base", cmd.w_base, tile.w_lanes, "codes"), ("a_base", cmd.a_base, R, "activations"),
                                   ("o_base", cmd.o_base, C, "outputs")):
        if base < 0 or base % unit:
            raise QiftError(f"{name}={base} is not aligned: use a multiple of {unit} {what} (one buffer word)")
    nt, kt = math.ceil(cmd.N / C), math.ceil(cmd.K / R)
    need = {"weight": (cmd.w_base // tile.w_lanes + nt * (kt if stream else cmd.K), tile.w_depth),
            "activation": (cmd.a_base // R + kt * cmd.M, tile.a_depth),
            "output": (cmd.o_base // C + nt * cmd.M, tile.o_depth)}
    for name, (end, depth) in need.items():
        if end > depth:
            raise QiftError(f"the GEMM {cmd.M}x{cmd.K}x{cmd.N} needs {name} words up to {end} but the {name} buffer "
                            f"has {depth}; use a smaller GEMM or a bigger tile")
    return {"m": cmd.M, "k": cmd.K, "n": cmd.N, "mt": cmd.m_tile, "w_base": cmd.w_base // tile.w_lanes,
            "a_base": cmd.a_base // R, "o_base": cmd.o_base // C}


def pack_cmd(tile: Tile, fields: dict) -> int:
    """The ``cmd`` payload as one integer (fields in the layout's order from bit 0)."""
    return _pack_struct(tile.cmd_layout, fields)


def pack_load(tile: Tile, target: str, addr: int, word: int) -> int:
    return _pack_struct(tile.load_layout, {"target": TARGETS[target], "addr": addr, "data": word})


def _pack_struct(layout, fields: dict) -> int:
    value = 0
    for name, f in layout:
        v = int(fields[name]) & ((1 << f.width) - 1)
        value |= v << f.offset
    return value


def _pack_lanes(lanes: np.ndarray, bits: int) -> np.ndarray:
    """Rows of lanes -> one integer per row, lane i at bits [i*bits, (i+1)*bits) (two's complement)."""
    lanes = np.asarray(lanes, dtype=np.int64) & ((1 << bits) - 1)
    shifts = np.arange(lanes.shape[-1], dtype=np.int64) * bits
    return (lanes << shifts).sum(axis=-1)


def weight_words(codes: np.ndarray, cols: int, code_bits: int) -> np.ndarray:
    """Weight buffer image of codes [N, K]: word n_t*K + k holds W[n_t*C + c, k] in lane c (0 past N)."""
    N, K = codes.shape
    nt = math.ceil(N / cols)
    padded = np.zeros((nt * cols, K), dtype=np.int64)
    padded[:N] = codes
    per_tile = padded.reshape(nt, cols, K).transpose(0, 2, 1)  # [n_t, k, c]
    return _pack_lanes(per_tile, code_bits).reshape(-1)


def tile_weight_words(codes: np.ndarray, rows: int, cols: int, code_bits: int) -> np.ndarray:
    """Weight buffer image for ``stream``: word k_t*n_tiles + n_t holds W[n_t*C + c, k_t*R + r] in lane r*C + c."""
    N, K = codes.shape
    nt, kt = math.ceil(N / cols), math.ceil(K / rows)
    padded = np.zeros((nt * cols, kt * rows), dtype=np.int64)
    padded[:N, :K] = codes
    per_tile = padded.reshape(nt, cols, kt, rows).transpose(2, 0, 3, 1)  # [k_t, n_t, r, c]
    return _pack_lanes(per_tile.reshape(kt, nt, rows * cols), code_bits).reshape(-1)


def act_words(acts: np.ndarray, rows: int, act_bits: int) -> np.ndarray:
    """Activation buffer image of acts [M, K]: word k_t*M + m holds A[m, k_t*R + r] in lane r (0 past K)."""
    M, K = acts.shape
    kt = math.ceil(K / rows)
    padded = np.zeros((M, kt * rows), dtype=np.int64)
    padded[:, :K] = acts
    per_tile = padded.reshape(M, kt, rows).transpose(1, 0, 2)  # [k_t, m, r]
    return _pack_lanes(per_tile, act_bits).reshape(-1)


def unpack_drain(beats: list[int], M: int, N: int, cols: int, acc_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Drain beats (N tiles outer, rows inner; C accumulators then C flags) -> values [M, N], flags [M, N]."""
    nt = math.ceil(N / cols)
    if len(beats) != nt * M:
        raise QiftError(f"expected {nt * M} drain beats for {M}x{N} outputs, got {len(beats)}")
    vals = np.zeros((M, nt * cols), dtype=np.int64)
    flags = np.zeros((M, nt * cols), dtype=bool)
    mask, half = (1 << acc_bits) - 1, 1 << (acc_bits - 1)
    for i, b in enumerate(beats):
        n_t, m = divmod(i, M)
        for c in range(cols):
            v = (b >> (c * acc_bits)) & mask
            vals[m, n_t * cols + c] = v - (1 << acc_bits) if v >= half else v
            flags[m, n_t * cols + c] = bool((b >> (cols * acc_bits + c)) & 1)
    return vals[:, :N], flags[:, :N]


@dataclass
class Job:
    """One command with the words it loads first and what it must give."""

    cmd: Command
    loads: list[tuple[str, int, int]]
    expected: np.ndarray | None
    expected_ovf: np.ndarray | None
    cycles: int
    reset_after: int | None = None
    """Reset the tile this many advancing cycles into the run (the job gives no outputs)."""
    coverage: dict = field(default_factory=dict)
    acts: np.ndarray | None = None
    codes: np.ndarray | None = None


@dataclass
class TileCase:
    name: str
    tile: dict
    jobs: list[Job]
    hold_prob: float = 0.1
    valid_prob: float = 0.7
    ready_prob: float = 0.7
    seed: int = 0
    note: str = ""

    def build(self) -> Tile:
        return layout_tile(self.tile)

    def top(self):
        return tile_top(**self.tile)

    def stimulus(self) -> dict:
        """What the bench reads: per job the load beats (packed payloads), the command payload and expectations."""
        tile = self.build()
        stim: dict = {"jobs": [], "rows": tile.rows, "cols": tile.cols, "acc_bits": tile.acc_bits,
                      "hold_prob": self.hold_prob, "valid_prob": self.valid_prob, "ready_prob": self.ready_prob,
                      "seed": self.seed, "states": list(STATES)}
        for i, job in enumerate(self.jobs):
            beats = [str(pack_load(tile, t, a, w)) for t, a, w in job.loads]
            stim[f"load{i}"] = np.array(beats or [""])[:len(beats)]
            stim[f"acts{i}"], stim[f"codes{i}"] = job.acts, job.codes
            entry = {"cmd": str(pack_cmd(tile, command_words(tile, job.cmd))), "M": job.cmd.M, "K": job.cmd.K,
                     "N": job.cmd.N, "cycles": job.cycles, "reset_after": job.reset_after,
                     "coverage": job.coverage}
            if job.expected is not None:
                stim[f"exp{i}"] = job.expected.astype(np.int64)
                stim[f"ovf{i}"] = job.expected_ovf.astype(bool)
            stim["jobs"].append(entry)
        return stim


def layout_tile(params: dict) -> Tile:
    """A tile built only to read its layouts and buffer sizes (never elaborated)."""
    from qift_hw.rtl.pe import silence_unused

    tile = Tile(**params)
    silence_unused(tile)
    return tile


def make_job(tile: Tile, acts: np.ndarray, codes: np.ndarray, cmd: Command | None = None, load: bool = True,
             reset_after: int | None = None, level_set: str = "pot_mnz") -> Job:
    """A job for acts [M, K] x codes [N, K] at the command's bases (default: all at 0)."""
    from qift_hw.sim import matmul
    from qift_hw.sim.dataflow import gemm_compute
    from qift_hw.verify.cases import direct_reference

    acts, codes = np.asarray(acts, dtype=np.int64), np.asarray(codes, dtype=np.int64)
    (M, K), N = acts.shape, codes.shape[0]
    cmd = cmd or Command(M, K, N)
    if (cmd.M, cmd.K, cmd.N) != (M, K, N):
        raise QiftError(f"command {cmd.M}x{cmd.K}x{cmd.N} does not match acts {acts.shape} x codes {codes.shape}")
    command_words(tile, cmd)
    loads = []
    if load:
        image = (tile_weight_words(codes, tile.rows, tile.cols, tile.code_bits) if tile.dataflow == "stream"
                 else weight_words(codes, tile.cols, tile.code_bits))
        loads += [("weights", cmd.w_base // tile.w_lanes + i, int(w)) for i, w in enumerate(image)]
        loads += [("acts", cmd.a_base // tile.rows + i, int(w))
                  for i, w in enumerate(act_words(acts, tile.rows, tile.act_bits))]
    ref, ref_ovf = matmul(acts.astype(np.int8), codes.astype(np.uint8), level_set, tile.acc_bits,
                          return_overflow=True, kernel="pe")
    direct, direct_ovf = direct_reference(acts, codes, level_set, tile.acc_bits)
    if not (np.array_equal(ref, direct) and np.array_equal(ref_ovf, direct_ovf)):
        raise QiftError("qift_hw.sim.matmul and the formats' rule disagree on this GEMM; the references are broken")
    cycles = gemm_compute(tile.dataflow, M, K, N, tile.rows, tile.cols, cmd.m_tile or None).cycles
    cov = {"partial_k": K % tile.rows != 0, "partial_n": N % tile.cols != 0,
           "partial_m": bool(cmd.m_tile) and M % cmd.m_tile != 0, "short_m": min(M, cmd.m_tile or M) < tile.rows,
           "saturates": bool(ref_ovf.any()), "tiles": math.ceil(K / tile.rows) * math.ceil(N / tile.cols)}
    return Job(cmd, loads, None if reset_after is not None else ref, None if reset_after is not None else ref_ovf,
               cycles, reset_after, cov, acts, codes)


def load_real_tiles(path: Path | None = None) -> dict:
    """The SmolLM2 GPTQ PoT-MNZ q_proj (slice and packed whole), down_proj slice and their INT4 activations
    (``sim/data/smollm2_tiles.npz``)."""
    from qift_hw.verify.cases import load_tiles

    tiles = load_tiles(path)
    if tiles is None:
        raise QiftError("sim/data/smollm2_tiles.npz is missing; write it with `qift-hw rtl tiles`")
    return tiles


def whole_qproj(real: dict) -> np.ndarray:
    """The whole q_proj's codes uint8 [N, K] from the tiles file (stored packed four per byte)."""
    from qift_hw.core.levels import unpack_codes

    if "qproj_packed" not in real or "down_codes" not in real:
        raise QiftError("sim/data/smollm2_tiles.npz has no whole q_proj or down_proj; write it again with "
                        "`qift-hw rtl tiles`")
    N, K = (int(v) for v in real["qproj_shape"])
    return unpack_codes(real["qproj_packed"], K).numpy()[:N]


SMALL_TILE = {"rows": 4, "cols": 4, "kind": "pot_mnz", "acc_bits": 32, "w_depth": 1024, "a_depth": 256,
              "o_depth": 256}
"""The tile of the quick cases (a 4x4 array; buffers of 1 KiB, 512 B, 4 x 1 KiB)."""
LAYER_TILE = {"rows": 4, "cols": 4, "kind": "pot_mnz", "acc_bits": 32, "w_depth": 9216, "a_depth": 2304,
              "o_depth": 256}
"""The tile of the layer-slice case: 64 output channels x 576 inputs of q_proj, 16 tokens."""
SAT_TILE = {**SMALL_TILE, "acc_bits": 8}
STREAM_TILE = {**SMALL_TILE, "dataflow": "stream", "w_depth": 256}
QPROJ_TOKENS, DOWN_TOKENS = 4, 8
"""Tokens of the whole-layer cases."""
WHOLE_TILE = {**LAYER_TILE, "w_depth": 576 // 4 * 576, "a_depth": 1536 // 4 * DOWN_TOKENS,
              "o_depth": 576 // 4 * QPROJ_TOKENS}
"""The tile of the whole-layer cases, its buffers sized to hold them: all of q_proj's 576 x 576 codes (82,944 words
of 4 codes, 81 KiB, a third of the default architecture's 256 KiB weight buffer), the down_proj slice's activations
(384 words per token) and q_proj's 576 outputs per token (144 words per bank per token)."""
"""The ``stream`` tile of the decode case: weight words of R x C codes."""


def _rand(rng, M, K, N):
    a = rng.integers(formats.ACT_QMIN, formats.ACT_QMAX + 1, (M, K))
    a[rng.integers(0, M), rng.integers(0, K)] = formats.ACT_QMIN
    return a, rng.integers(0, 4, (N, K))


def tile_cases(seed: int = 0, tiles_file: Path | None = None) -> list[TileCase]:
    """The tile suite: random shapes with back-pressure everywhere and a mid-run reset, the real SmolLM2 layers
    (reduced, a 64-channel slice, the whole q_proj, a down_proj slice with 1536-long rows), accumulator
    saturation."""
    rng = np.random.default_rng(seed)
    small = layout_tile(SMALL_TILE)
    jobs = []
    for M, K, N, mt in ((6, 11, 9, 4), (3, 5, 2, 0), (9, 13, 7, 4), (1, 4, 4, 0)):
        a, w = _rand(rng, M, K, N)
        jobs.append(make_job(small, a, w, Command(M, K, N, mt, w_base=4 * N, a_base=8, o_base=4)))
    for _ in range(2):  # random shapes
        M, K, N = int(rng.integers(1, 11)), int(rng.integers(1, 21)), int(rng.integers(1, 13))
        a, w = _rand(rng, M, K, N)
        jobs.append(make_job(small, a, w, Command(M, K, N, int(rng.integers(0, M + 1)))))
    a, w = _rand(rng, 5, 12, 10)
    jobs.insert(2, make_job(small, a, w, Command(5, 12, 10), reset_after=17))
    # a second run of the last GEMM on the words already loaded: its command waits while the tile is busy
    last = jobs[-1]
    jobs.append(Job(last.cmd, [], last.expected, last.expected_ovf, last.cycles, None, last.coverage, last.acts,
                    last.codes))
    cases = [TileCase("tile_random", SMALL_TILE, jobs, seed=seed,
                      note="random M x K x N with partial K/N/M tiles, M < R, bases, a mid-run reset, repeat run")]
    sat = layout_tile(SAT_TILE)
    M, K, N = 6, 24, 7
    a = np.where(rng.random((M, K)) < 0.5, formats.ACT_QMIN, formats.ACT_QMAX)
    w = rng.choice([1, 3], (N, K))  # the largest magnitudes of both signs
    cases.append(TileCase("tile_saturation_a8", SAT_TILE, [make_job(sat, a, w, Command(M, K, N, 4))], seed=seed,
                          note="8-bit accumulators, -8/+7 x the largest PoT-MNZ codes"))
    real = load_real_tiles(tiles_file)
    acts, codes = real["acts"].astype(np.int64), real["codes"].astype(np.int64)
    red = [make_job(small, acts[:4, :64], codes[:12, :64], Command(4, 64, 12))]
    cases.append(TileCase("tile_smollm2_reduced", SMALL_TILE, red, hold_prob=0.05, seed=seed,
                          note="SmolLM2 GPTQ PoT-MNZ q_proj: 12 channels x 64 inputs, 4 tokens"))
    st = layout_tile(STREAM_TILE)
    dec = [make_job(st, acts[4:6, :64], codes[:16, :64], Command(2, 64, 16))]
    for M, K, N, mt in ((1, 23, 30, 0), (3, 13, 10, 2), (1, 4, 4, 0)):
        a, w = _rand(rng, M, K, N)
        dec.append(make_job(st, a, w, Command(M, K, N, mt, w_base=16 * (mt + 1), a_base=4, o_base=4 * mt)))
    dec.insert(2, make_job(st, *_rand(rng, 2, 20, 9), Command(2, 20, 9), reset_after=9))
    cases.append(TileCase("tile_stream_decode", STREAM_TILE, dec, seed=seed,
                          note="stream (decode): 2 real SmolLM2 tokens x 64 x 16, M = 1 and 3 with partial tiles, "
                               "a mid-run reset"))
    lay = layout_tile(LAYER_TILE)
    whole = [make_job(lay, acts, codes, Command(acts.shape[0], acts.shape[1], codes.shape[0], 8))]
    cases.append(TileCase("tile_smollm2_qproj_slice", LAYER_TILE, whole, hold_prob=0.0, valid_prob=1.0,
                          ready_prob=1.0, seed=seed, note="SmolLM2 GPTQ PoT-MNZ q_proj: 64 channels x 576, 16 tokens"))
    full = layout_tile(WHOLE_TILE)
    q = whole_qproj(real)
    qa = acts[:QPROJ_TOKENS]
    cases.append(TileCase("tile_smollm2_qproj_full", WHOLE_TILE,
                          [make_job(full, qa, q.astype(np.int64), Command(qa.shape[0], q.shape[1], q.shape[0]))],
                          hold_prob=0.0, valid_prob=1.0, ready_prob=1.0, seed=seed,
                          note=f"SmolLM2 GPTQ PoT-MNZ q_proj, all {q.shape[0]} x {q.shape[1]} weights, "
                               f"{qa.shape[0]} tokens"))
    da, dw = real["down_acts"][:DOWN_TOKENS].astype(np.int64), real["down_codes"].astype(np.int64)
    cases.append(TileCase("tile_smollm2_down_slice", WHOLE_TILE,
                          [make_job(full, da, dw, Command(da.shape[0], da.shape[1], dw.shape[0]))],
                          hold_prob=0.0, valid_prob=1.0, ready_prob=1.0, seed=seed,
                          note=f"SmolLM2 GPTQ PoT-MNZ down_proj: {dw.shape[0]} channels x {dw.shape[1]} (rows of its "
                               f"1536 inputs after the online Hadamard), {DOWN_TOKENS} tokens"))
    return cases


@dataclass
class TileResult:
    """One tile case on one simulator: pass/fail, per-job rows, coverage and times."""

    name: str
    sim: str
    top: str
    passed: bool
    problems: list
    jobs: list
    sim_cycles: int
    build_s: float
    run_s: float
    loop_s: float
    coverage: dict
    coverage_xml: str
    note: str = ""
    free_cycles: int = 0
    """Cycles the simulator ran without the bench stepping it (the compute of a job without stalls) ..."""
    free_s: float = 0.0
    """... and their wall time."""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_tile_case(case: TileCase, sim: str, build_root: Path | None = None) -> TileResult:
    """Generate the case's tile, build it (cached) and run ``sim/bench_tile.py`` on it."""
    import time

    from qift_hw.rtl.generate import write_top
    from qift_hw.verify.simulate import BUILD_ROOT, run_bench

    root = Path(build_root) if build_root else BUILD_ROOT
    top = case.top()
    verilog = write_top(top, root / "verilog")
    t0 = time.perf_counter()
    run = run_bench(sim, verilog, top.name, BENCH, case.stimulus(), build_root=root, tag=case.name)
    s = run.summary
    problems = [] if run.passed else [run.message or "bench failed"]
    jobs = s.get("jobs", [])
    if run.passed and len(jobs) != len(case.jobs):
        problems.append(f"the bench finished {len(jobs)} of {len(case.jobs)} jobs")
    xml = root / sim / top.name / f"run_{case.name}" / "coverage.xml"
    return TileResult(case.name, sim, top.name, not problems, problems, jobs, int(s.get("sim_cycles", 0)),
                      round(run.build_s, 2), round(time.perf_counter() - t0 - run.build_s, 2),
                      round(float(s.get("loop_s", 0.0)), 2), s.get("coverage", {}),
                      str(xml) if xml.exists() else "", case.note, int(s.get("free_cycles", 0)),
                      round(float(s.get("free_s", 0.0)), 3))


def merge_coverage(results: list[TileResult], out: Path) -> dict:
    """Merge the benches' coverage XML files into ``out`` (cocotb-coverage's merge) and return per cover item
    (covered, size) of the merged report."""
    import logging
    import xml.etree.ElementTree as ET

    from cocotb_coverage.coverage import merge_coverage as merge

    files = [r.coverage_xml for r in results if r.coverage_xml]
    if not files:
        raise QiftError("no coverage files to merge; run the tile benches first")
    out.parent.mkdir(parents=True, exist_ok=True)
    merge(logging.getLogger("qift_hw.tile_coverage").info, str(out), *files)
    summary = {}
    for el in ET.parse(out).getroot().iter():
        name = el.attrib.get("abs_name", "").removeprefix("top.")
        if "size" in el.attrib and name.count(".") == 2:
            summary[name] = [int(el.attrib["coverage"]), int(el.attrib["size"])]
    return summary


def run_amaranth(tile: Tile, jobs: list[Job], hold_prob: float = 0.0, seed: int = 0) -> list[dict]:
    """Run the jobs on ``tile`` in the Amaranth simulator (loads back to back, drain always ready, ``hold`` at
    random): per job the drained values and flags, the ``cycles`` count and the ``err`` bit (reset jobs are not
    supported here)."""
    from amaranth.sim import Simulator

    rng = np.random.default_rng(seed)
    out: list[dict] = []

    async def bench(ctx):
        for job in jobs:
            for target, addr, word in job.loads:
                ctx.set(tile.load.payload, tile.load_layout.const({"target": TARGETS[target], "addr": addr,
                                                                    "data": word}))
                ctx.set(tile.load.valid, 1)
                await ctx.tick()
            ctx.set(tile.load.valid, 0)
            fields = {"m": job.cmd.M, "k": job.cmd.K, "n": job.cmd.N, "mt": job.cmd.m_tile,
                      "w_base": job.cmd.w_base // tile.w_lanes, "a_base": job.cmd.a_base // tile.rows,
                      "o_base": job.cmd.o_base // tile.cols}
            ctx.set(tile.cmd.payload, tile.cmd_layout.const(fields))
            ctx.set(tile.cmd.valid, 1)
            await ctx.tick()
            ctx.set(tile.cmd.valid, 0)
            ctx.set(tile.drain.ready, 1)
            if ctx.get(tile.err):
                out.append({"err": 1})
                continue
            want = math.ceil(job.cmd.N / tile.cols) * job.cmd.M
            beats, cycles = [], 0
            for _ in range(8 * job.cycles + 4 * want + 100):
                ctx.set(tile.hold, int(rng.random() < hold_prob))
                if ctx.get(tile.drain.valid):
                    beats.append(ctx.get(tile.drain.payload).as_value().value)
                    cycles = ctx.get(tile.cycles)
                await ctx.tick()
                if len(beats) == want:
                    break
            ctx.set(tile.hold, 0)
            vals, flags = unpack_drain(beats, job.cmd.M, job.cmd.N, tile.cols, tile.acc_bits)
            out.append({"values": vals, "ovf": flags, "cycles": cycles, "err": 0})

    sim = Simulator(tile)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def verify_tile_suite(sim: str, folder: Path, build_root: Path | None = None, quick: bool = False,
                      only: tuple[str, ...] = (), seed: int = 0) -> dict:
    """Run the tile cases on ``sim``, merge their coverage into ``folder/tile_coverage_<sim>.xml`` and write
    ``folder/rtl_verify_tile_<sim>.json`` (results, merged coverage, provenance); returns what it wrote."""
    import time

    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance

    cases = tile_cases(seed)
    known = [c.name for c in cases]
    unknown = sorted(set(only) - set(known))
    if unknown:
        raise QiftError(f"unknown tile case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    cases = [c for c in cases if (c.name in only if only else (not quick or c.name in QUICK_TILE))]
    t0 = time.perf_counter()
    results = [run_tile_case(c, sim, build_root) for c in cases]
    cov_path = Path(folder) / f"tile_coverage_{sim}.xml"
    coverage = merge_coverage(results, cov_path) if any(r.coverage_xml for r in results) else {}
    data = {"sim": sim, "seed": seed, "quick": quick, "seconds": round(time.perf_counter() - t0, 1),
            "passed": sum(r.passed for r in results), "total": len(results), "coverage": coverage,
            "coverage_xml": str(cov_path), "cases": [r.as_dict() for r in results], "provenance": provenance()}
    write_json(Path(folder) / f"rtl_verify_tile_{sim}.json", data)
    return data
