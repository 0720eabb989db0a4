"""The accelerator tile (qift_hw.rtl.tile): outputs bit-exact with qift_hw.sim.matmul, advancing cycles equal to the
v2 closed form gemm_compute("ws"), in the Amaranth simulator and through cocotb on Icarus and Verilator (a reduced
real SmolLM2 layer in the default group; slow: the 64 x 576 q_proj slice, the whole 576 x 576 q_proj and a down_proj
slice with its 1536-long rows, loaded whole into the tile's buffers); buffer images against loops written out;
bad commands refused by the driver and the hardware."""

import functools
import math
from pathlib import Path

import numpy as np
import pytest

from qift_hw.core.errors import QiftError
from qift_hw.sim.dataflow import gemm_compute
from qift_hw.verify.cases import direct_reference
from qift_hw.verify.simulate import simulator_available
from qift_hw.verify.tile_cases import (QUICK_TILE, SMALL_TILE, Command, Job, act_words, command_words, layout_tile,
                                       make_job, merge_coverage, run_amaranth, run_tile_case, tile_cases,
                                       tile_weight_words, unpack_drain, weight_words)

BUILD = Path(__file__).resolve().parents[1] / "sim_build"


@functools.lru_cache(maxsize=1)
def _cases() -> dict:
    return {c.name: c for c in tile_cases()}


def _fresh(params=SMALL_TILE, **over):
    from qift_hw.rtl.tile import Tile

    return Tile(**{**params, **over})


@pytest.mark.parametrize("seed", [0, 1])
def test_amaranth_random_gemms(seed):
    """Random shapes (partial K/N/M tiles, M < R, m_tile chunks, non-zero bases, one- and many-tile GEMMs) with the
    array stalled at random: every output and flag equals the formats' rule, every cycle count gemm_compute."""
    rng = np.random.default_rng(seed)
    tile = _fresh(w_depth=256, a_depth=128, o_depth=128)
    jobs, shapes = [], []
    for _ in range(4):
        M, K, N = int(rng.integers(1, 10)), int(rng.integers(1, 14)), int(rng.integers(1, 11))
        mt = int(rng.integers(0, M + 1))
        a, w = rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (N, K))
        jobs.append(make_job(tile, a, w, Command(M, K, N, mt, w_base=8, a_base=4, o_base=12)))
        shapes.append((a, w, M, K, N, mt))
    for got, (a, w, M, K, N, mt) in zip(run_amaranth(tile, jobs, hold_prob=0.25, seed=seed), shapes):
        ref, ovf = direct_reference(a, w, "pot_mnz", 32)
        np.testing.assert_array_equal(got["values"], ref)
        np.testing.assert_array_equal(got["ovf"], ovf)
        assert got["cycles"] == gemm_compute("ws", M, K, N, 4, 4, mt or None).cycles


def test_amaranth_saturation_and_odd_array():
    """8-bit accumulators saturating at both rails, on a 3 x 2 array (R != C, not powers of two)."""
    tile = _fresh(rows=3, cols=2, acc_bits=8, w_depth=128, a_depth=64, o_depth=64)
    rng = np.random.default_rng(3)
    M, K, N = 5, 14, 5
    a = np.where(rng.random((M, K)) < 0.5, -8, 7)
    w = rng.choice([1, 3], (N, K))
    got = run_amaranth(tile, [make_job(tile, a, w, Command(M, K, N, 2))], hold_prob=0.2)[0]
    ref, ovf = direct_reference(a, w, "pot_mnz", 8)
    assert ovf.any() and (ref == 127).any() and (ref == -128).any()
    np.testing.assert_array_equal(got["values"], ref)
    np.testing.assert_array_equal(got["ovf"], ovf)
    assert got["cycles"] == gemm_compute("ws", M, K, N, 3, 2, 2).cycles


def test_zero_dimension_sets_err_and_runs_nothing():
    tile = _fresh(w_depth=64, a_depth=32, o_depth=32)
    rng = np.random.default_rng(0)
    good = make_job(tile, rng.integers(-8, 8, (2, 4)), rng.integers(0, 4, (3, 4)))
    bad = Job(Command(0, 4, 4), [], None, None, 0)
    res = run_amaranth(tile, [bad, good])
    assert res[0] == {"err": 1}
    assert res[1]["err"] == 0 and np.array_equal(res[1]["values"], good.expected)


def test_buffer_images_written_out():
    """Weight word n_t*K + k holds W[n_t*C + c, k] in lane c; activation word k_t*M + m holds A[m, k_t*R + r]."""
    rng = np.random.default_rng(1)
    codes, acts = rng.integers(0, 4, (7, 5)), rng.integers(-8, 8, (3, 6))
    ww, aw = weight_words(codes, 4, 2), act_words(acts, 4, 4)
    assert len(ww) == 2 * 5 and len(aw) == 2 * 3
    for n in range(8):
        for k in range(5):
            want = codes[n, k] if n < 7 else 0
            assert (int(ww[(n // 4) * 5 + k]) >> (2 * (n % 4))) & 3 == want
    for m in range(3):
        for k in range(8):
            want = (acts[m, k] if k < 6 else 0) & 15
            assert (int(aw[(k // 4) * 3 + m]) >> (4 * (k % 4))) & 15 == want


def test_drain_unpacking():
    beats = [(5 << 32) | ((1 << 32) - 3) | (1 << 128 + 1)] + [0] * 1
    vals, flags = unpack_drain(beats, 1, 5, 4, 32)
    assert vals[0].tolist() == [-3, 5, 0, 0, 0] and flags[0].tolist() == [False, True, False, False, False]


@pytest.mark.parametrize("cmd,msg", [
    (Command(0, 4, 4), "dimension M"), (Command(4, 0, 4), "dimension K"), (Command(4, 4, -1), "dimension N"),
    (Command(4, 4, 4, w_base=2), "w_base=2 is not aligned"), (Command(4, 4, 4, a_base=6), "a_base=6 is not aligned"),
    (Command(4, 4, 4, o_base=1), "o_base=1 is not aligned"), (Command(4, 1024, 8), "weight buffer"),
    (Command(300, 4, 4), "activation buffer"), (Command(200, 4, 8), "output buffer"),
    (Command(4, 4, 4, w_base=4 * 1024), "weight buffer"), (Command(1 << 16, 4, 4), "16 bits"),
])
def test_bad_commands_are_refused(cmd, msg):
    tile = layout_tile(SMALL_TILE)
    with pytest.raises(QiftError, match=msg):
        command_words(tile, cmd)


def test_bad_tile_parameters():
    with pytest.raises(QiftError, match="w_depth"):
        _fresh(w_depth=0)
    with pytest.raises(QiftError, match="PE kind"):
        _fresh(kind="nope")


def test_depths_from_arch():
    from qift_hw.rtl.tile import depths_from_arch
    from qift_hw.sim.arch import Arch

    arch = Arch()
    p = depths_from_arch(arch, 4, 4, scale=64)
    b = arch.buffers
    assert p["w_depth"] == int(b.weight.kib * 8192 / 64) // 8
    assert p["a_depth"] == int(b.act.kib * 8192 / 64) // 16
    assert p["o_depth"] == int(b.out.kib * 8192 / 64) // (4 * (arch.acc_bits + 1))
    assert depths_from_arch(arch, 4, 4, scale=64, dataflow="stream")["w_depth"] == p["w_depth"] // 4
    with pytest.raises(QiftError, match="scale"):
        depths_from_arch(arch, scale=0.5)


def test_suite_covers_the_brief():
    cases = _cases()
    feats = [j.coverage for c in cases.values() for j in c.jobs]
    for f in ("partial_k", "partial_n", "partial_m", "short_m", "saturates"):
        assert any(x.get(f) for x in feats), f
    assert any(j.reset_after is not None for j in cases["tile_random"].jobs)
    assert any(not j.loads for j in cases["tile_random"].jobs)  # a command that waits while the tile is busy
    sl = cases["tile_smollm2_qproj_slice"].jobs[0]
    assert sl.acts.shape[1] == 576 and sl.codes.shape == (64, 576)
    full = cases["tile_smollm2_qproj_full"].jobs
    assert len(full) == 1 and full[0].codes.shape == (576, 576) and full[0].acts.shape[1] == 576
    down = cases["tile_smollm2_down_slice"].jobs
    assert len(down) == 1 and down[0].codes.shape[1] == 1536 and down[0].acts.shape[1] == 1536
    for job in full + down:  # every weight word of the layer is loaded once, into buffers that hold it
        n_words = math.ceil(job.cmd.N / 4) * job.cmd.K
        assert sorted(a for t, a, _ in job.loads if t == "weights") == list(range(n_words))
    for c in cases.values():
        df = c.tile.get("dataflow", "ws")
        for j in c.jobs:
            assert j.cycles == gemm_compute(df, j.cmd.M, j.cmd.K, j.cmd.N, 4, 4, j.cmd.m_tile or None).cycles
    assert any(j.cmd.M == 1 for j in cases["tile_stream_decode"].jobs)


def test_whole_qproj_agrees_with_the_slice():
    """The packed whole q_proj unpacks to codes whose first channels are the file's unpacked slice, and the
    down_proj inputs are INT4."""
    from qift_hw.verify.tile_cases import load_real_tiles, whole_qproj

    real = load_real_tiles()
    q = whole_qproj(real)
    assert q.shape == (576, 576) and q.dtype == np.uint8 and int(q.max()) <= 3
    np.testing.assert_array_equal(q[:real["codes"].shape[0]], real["codes"])
    assert real["down_acts"].shape[1] == 1536 and real["down_codes"].shape[1] == 1536
    assert -8 <= int(real["down_acts"].min()) and int(real["down_acts"].max()) <= 7


def _run(sim: str, name: str, tmp_path: Path) -> None:
    reason = simulator_available(sim)
    if reason:
        pytest.skip(reason)
    pytest.importorskip("cocotb_coverage", reason="cocotb-coverage not installed (the test extra)")
    r = run_tile_case(_cases()[name], sim, BUILD)
    assert r.passed, r.problems
    jobs = [j for j in r.jobs if not j.get("reset")]
    assert jobs and all(j["wrong"] == 0 and j["cycles"] == j["expected_cycles"] for j in jobs)
    assert r.coverage_xml
    merged = merge_coverage([r], tmp_path / "coverage.xml")
    assert merged["tile.mac.code_x_act_x_position"][0] > 0
    if name == "tile_random":
        assert merged["tile.stream.backpressure"] == [4, 4]
        assert merged["tile.seq.state"] == [5, 5]
        assert math.isclose(len(r.jobs), len(_cases()[name].jobs))


SIM_CASES = [pytest.param(n, marks=[pytest.mark.sim] + ([] if n in QUICK_TILE else [pytest.mark.slow]))
             for n in _cases()]


@pytest.mark.parametrize("name", SIM_CASES)
def test_icarus(name, tmp_path):
    _run("icarus", name, tmp_path)


@pytest.mark.parametrize("name", SIM_CASES)
def test_verilator(name, tmp_path):
    _run("verilator", name, tmp_path)


@pytest.mark.parametrize("R,C", [(1, 3), (2, 1), (1, 1)])
def test_amaranth_degenerate_arrays(R, C):
    """1-row and 1-column arrays: no skew registers on one side, a 0-bit load counter at R = 1."""
    rng = np.random.default_rng(R * 10 + C)
    tile = _fresh(rows=R, cols=C, acc_bits=16, w_depth=128, a_depth=64, o_depth=64)
    M, K, N = 3, 5, 4
    a, w = rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (N, K))
    got = run_amaranth(tile, [make_job(tile, a, w, Command(M, K, N, 2))], hold_prob=0.2)[0]
    np.testing.assert_array_equal(got["values"], direct_reference(a, w, "pot_mnz", 16)[0])
    assert got["cycles"] == gemm_compute("ws", M, K, N, R, C, 2).cycles


@pytest.mark.parametrize("R,C", [(4, 4), (3, 2), (1, 3), (2, 1)])
def test_amaranth_stream(R, C):
    """Dataflow stream (decode): M = 1 (a tile every cycle), K rounds shorter than R, m_tile chunks, stalls."""
    rng = np.random.default_rng(R * 7 + C)
    tile = _fresh(rows=R, cols=C, acc_bits=20, w_depth=512, a_depth=128, o_depth=128, dataflow="stream")
    jobs, shapes = [], [(1, 23, 30, 0), (3, 13, 10, 0), (6, 11, 9, 4), (2, 5, 3, 0)]
    for M, K, N, mt in shapes:
        a, w = rng.integers(-8, 8, (M, K)), rng.integers(0, 4, (N, K))
        jobs.append(make_job(tile, a, w, Command(M, K, N, mt, w_base=R * C, a_base=R, o_base=C)))
    for got, job, (M, K, N, mt) in zip(run_amaranth(tile, jobs, hold_prob=0.2), jobs, shapes):
        ref, ovf = direct_reference(job.acts, job.codes, "pot_mnz", 20)
        np.testing.assert_array_equal(got["values"], ref)
        np.testing.assert_array_equal(got["ovf"], ovf)
        assert got["cycles"] == gemm_compute("stream", M, K, N, R, C, mt or None).cycles


def test_stream_weight_image_written_out():
    """Word k_t*n_tiles + n_t holds W[n_t*C + c, k_t*R + r] in lane r*C + c (0 past N and K)."""
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 4, (5, 7))
    R, C = 3, 2
    ww = tile_weight_words(codes, R, C, 2)
    assert len(ww) == 3 * 3
    for n in range(6):
        for k in range(9):
            want = codes[n, k] if n < 5 and k < 7 else 0
            lane = (k % R) * C + n % C
            assert (int(ww[(k // R) * 3 + n // C]) >> (2 * lane)) & 3 == want


def test_bad_dataflow_and_stream_alignment():
    with pytest.raises(QiftError, match="dataflow"):
        _fresh(dataflow="os")
    tile = layout_tile({**SMALL_TILE, "dataflow": "stream"})
    with pytest.raises(QiftError, match="multiple of 16 codes"):
        command_words(tile, Command(2, 4, 4, w_base=4))
    with pytest.raises(QiftError, match="weight buffer"):
        command_words(tile, Command(1, 4 * 33, 4 * 32))


def test_cli_verify_suite_tile(monkeypatch, tmp_path):
    """`qift-hw rtl verify --suite tile` hands its options to verify_tile_suite and prints its table and coverage;
    an unknown suite is refused."""
    from typer.testing import CliRunner

    import qift_hw.verify.tile_cases as tc
    from qift_hw.cli.app import app

    if simulator_available("icarus"):
        pytest.skip(simulator_available("icarus"))
    seen = {}

    def fake(sim, folder, build_root, quick, only, seed):
        seen.update(sim=sim, folder=folder, quick=quick, only=only, seed=seed)
        job = {"job": 0, "M": 2, "K": 3, "N": 4, "cycles": 17, "expected_cycles": 17, "wrong": 0}
        return {"cases": [{"name": "tile_random", "passed": True, "jobs": [job, {"job": 1, "reset": True}],
                           "run_s": 1.0}], "coverage": {"tile.seq.state": [5, 5]}, "passed": 1, "total": 1,
                "coverage_xml": str(folder / "tile_coverage_icarus.xml")}

    monkeypatch.setattr(tc, "verify_tile_suite", fake)
    res = CliRunner().invoke(app, ["rtl", "verify", "--suite", "tile", "--quick", "--only", "tile_random",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert seen == {"sim": "icarus", "folder": tmp_path, "quick": True, "only": ("tile_random",), "seed": 0}
    assert "2x3x4" in res.output and "reset mid-run" in res.output and "tile.seq.state: 5/5" in res.output
    res = CliRunner().invoke(app, ["rtl", "verify", "--suite", "nope", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown --suite" in str(res.output) + str(res.exception)
