"""Accelerator model v2 engine: the DMA closed form against an event simulation, byte counts from the formats,
the done-when figures of LLaMA-2-7B on the edge preset, monotonic sanity, and one-line errors."""

import math
import random

import pytest

from qift_hw.core.errors import QiftError
from qift_hw.core.shapes import load_model_shape
from qift_hw.sim.accelerator import estimate, estimate_point, simulate
from qift_hw.sim.arch import load_arch
from qift_hw.sim.energy import PARTS, hadamard_adds
from qift_hw.sim.memory import dma_pipeline
from qift_hw.sim.workload import Op, Workload

BIG = {"buffers.weight.kib": 1024, "buffers.act.kib": 1024, "buffers.out.kib": 1024}


def event_sim(tiles, tail=0.0):
    """Tile by tile: DMA i starts after DMA i-1 and after tile i-2's compute (two buffer slots); compute i starts
    after compute i-1 and after DMA i."""
    dma_end, comp_end = [], []
    for i, (c, d) in enumerate(tiles):
        start = max(dma_end[-1] if dma_end else 0.0, comp_end[i - 2] if i >= 2 else 0.0)
        dma_end.append(start + d)
        comp_end.append(max(comp_end[-1] if comp_end else 0.0, dma_end[-1]) + c)
    return (comp_end[-1] if comp_end else 0.0) + tail


def test_dma_closed_form_equals_event_simulation():
    rng = random.Random(11)
    for _ in range(400):
        groups = [(rng.randint(0, 12), rng.choice([0, rng.randint(0, 40), rng.random() * 40]),
                   rng.choice([0, rng.randint(0, 40), rng.random() * 40])) for _ in range(rng.randint(1, 5))]
        tail = rng.choice([0.0, rng.random() * 10])
        tiles = [(c, d) for n, c, d in groups for _ in range(n)]
        assert dma_pipeline(groups, tail) == pytest.approx(event_sim(tiles, tail), abs=1e-9)


def _one(arch, op, phase="gemm"):
    return simulate(arch, Workload("t", phase, op.level_set or "kv", op.M, (op,)))


def test_single_tile_bytes_from_the_formats():
    """M=4, K=64, N=16 W2 on 32x32 with room for everything: one tile, every operand read once."""
    arch = load_arch("edge", BIG)
    M, K, N = 4, 64, 16
    row = _one(arch, Op("g", "linear", M, K, N, 1, "pot_mnz"))["layers"][0]
    assert row["dram_weight_read_bytes"] == math.ceil(K * 2 / 8) * N + 4 * N  # packed codes + FP32 scale per column
    assert row["dram_act_read_bytes"] == math.ceil(K * 4 / 8) * M + 4 * M  # INT4 packed + FP32 scale per row
    assert row["dram_out_write_bytes"] == M * N * 2  # FP16 outputs
    assert row["sram_weight_read_bytes"] == K * N * 2 / 8 + 4 * N  # each code enters the array once, scales once
    assert row["sram_act_read_bytes"] == M * K * 4 / 8  # one N tile: activations enter once
    assert row["sram_out_write_bytes"] == math.ceil(K / 32) * M * N * 4  # a partial sum per K tile, 32 bits
    assert row["dataflow"] == "stream" and row["m_tile"] == M
    asym = load_arch("edge", {**BIG, "pe": {"asym": "std"}})
    row = _one(asym, Op("g", "linear", M, K, N, 1, "asym"))["layers"][0]
    assert row["dram_weight_read_bytes"] == math.ceil(K * 2 / 8) * N + 8 * N  # scale and zero per column


def test_kv_operand_and_writes():
    arch = load_arch("edge", BIG)
    op = Op("attn_qk", "attention", 1, 128, 300, 1, kv_read_bytes=12345.0, kv_write_bytes=77.0)
    row = _one(arch, op, "decode")["layers"][0]
    assert row["dram_kv_read_bytes"] == 12345.0 and row["dram_kv_write_bytes"] == 77.0
    assert row["dram_weight_read_bytes"] == 0 and row["pe"] == "int4"


def test_weights_reread_per_m_chunk_when_they_do_not_stay():
    arch = load_arch("edge", {"buffers.weight.kib": 8, "buffers.out.kib": 2})
    M, K, N = 300, 512, 256
    w = math.ceil(K * 8 / 8) * N + 4 * N
    row = _one(arch, Op("g", "linear", M, K, N, 1, "int8"))["layers"][0]
    chunks = math.ceil(M / row["m_tile"])
    assert chunks > 1 and row["dram_weight_read_bytes"] == chunks * w
    small = _one(arch, Op("g", "linear", M, 64, 32, 1, "pot_mnz"))["layers"][0]
    assert small["dram_weight_read_bytes"] == math.ceil(64 * 2 / 8) * 32 + 4 * 32  # fits: read once


def test_tiled_layer_close_to_tile_by_tile_simulation():
    """The layer's cycles against an event simulation of every tile with its own operand bytes (each slice packed
    on its own, scales with the first K chunk), in loop order M chunks > N blocks > K chunks."""
    rng = random.Random(5)
    for _ in range(40):
        arch = load_arch("edge", {"buffers.weight.kib": rng.choice([4, 16, 64]), "buffers.out.kib": rng.choice([2, 8]),
                                  "buffers.act.kib": rng.choice([4, 16]), "dram.gbps": rng.choice([2, 16, 200]),
                                  "array.rows": 8, "array.cols": 8})
        M, K, N = rng.randint(1, 200), rng.randint(8, 600), rng.randint(8, 300)
        row = _one(arch, Op("g", "linear", M, K, N, 1, "int4"))["layers"][0]
        m, n, k = row["m_tile"], row["n_tile"], row["k_tile"]
        bpc, w_once = arch.bytes_per_cycle, math.ceil(K * 4 / 8) * N + 4 * N
        busy = max(row["compute_cycles"], row["buffer_cycles"])
        w_resident = M <= m or w_once <= arch.buffers.weight.tile_bytes
        a_resident = N <= n or math.ceil(K * 4 / 8) * m + 4 * m <= arch.buffers.act.tile_bytes
        tiles, pending = [], 0.0
        for i0 in range(0, M, m):
            rows = min(m, M - i0)
            for j0 in range(0, N, n):
                cols = min(n, N - j0)
                for k0 in range(0, K, k):
                    kk = min(k, K - k0)
                    d = pending
                    pending = 0.0
                    if i0 == 0 or not w_resident:
                        d += math.ceil(kk * 4 / 8) * cols + (4 * cols if k0 == 0 else 0)
                    if j0 == 0 or not a_resident:
                        d += math.ceil(kk * 4 / 8) * rows + (4 * rows if k0 == 0 else 0)
                    tiles.append((busy * rows * kk * cols / (M * K * N), d / bpc))
                pending = rows * cols * 2
        ref = event_sim(tiles, pending / bpc)
        assert row["total_cycles"] == pytest.approx(ref, rel=0.08, abs=3)  # slices' byte rounding on tiny layers


@pytest.fixture(scope="module")
def llama_edge():
    return estimate(load_arch("edge"), load_model_shape("llama2-7b"), seqlen=512)


def test_done_when_llama2_7b_edge(llama_edge):
    s = {(r["format"], r["phase"]): r for r in llama_edge["summary"]}
    assert {r["bound"] for (f, p), r in s.items() if p == "decode"} == {"dram"}
    assert {r["bound"] for (f, p), r in s.items() if p == "prefill"} == {"compute"}
    assert s["pot_mnz", "decode"]["tokens_per_s"] >= 3 * s["int8", "decode"]["tokens_per_s"]
    pre = [s[f, "prefill"]["tokens_per_s"] for f in ("pot_mnz", "int4", "int8")]
    assert max(pre) <= 1.01 * min(pre)
    for r in llama_edge["summary"]:
        parts = [r[p.replace("_pj", "_uj")] for p in PARTS]
        assert min(parts) > 0
        assert math.fsum(parts) == pytest.approx(r["energy_per_token_uj"], rel=1e-12)
    for r in llama_edge["layers"]:
        assert math.fsum(r[p] for p in PARTS) == pytest.approx(r["energy_pj"], rel=1e-12)
        assert r["total_cycles"] == r["compute_cycles"] + r["stall_cycles"]


def test_w2_pe_energy_below_int8(llama_edge):
    s = {(r["format"], r["phase"]): r for r in llama_edge["summary"]}
    assert s["pot_mnz", "prefill"]["e_pe_uj"] < s["int4", "prefill"]["e_pe_uj"] < s["int8", "prefill"]["e_pe_uj"]
    assert s["pot_mnz", "decode"]["energy_per_token_uj"] < s["int8", "decode"]["energy_per_token_uj"]


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_more_dram_bandwidth_never_slows(phase):
    shape = load_model_shape("smollm2")
    last = 0.0
    for gbps in (1, 4, 16, 64, 256, 1024):
        r = estimate(load_arch("edge", {"dram.gbps": gbps}), shape, ["pot_mnz"], seqlen=128, phases=(phase,))
        tps = r["summary"][0]["tokens_per_s"]
        assert tps >= last
        last = tps


def test_bigger_array_never_raises_compute_bound_cycles():
    shape = load_model_shape("smollm2")
    rows = {}
    for size in (16, 32, 64):
        r = estimate(load_arch("hbm", {"array.rows": size, "array.cols": size}), shape, ["int4"], seqlen=256,
                     phases=("prefill",))
        rows[size] = {x["layer"]: x for x in r["layers"] if x["kind"] != "hadamard"}
    for small, big in ((16, 32), (32, 64)):
        for name, x in rows[small].items():
            if x["bound"] == "compute":
                assert rows[big][name]["total_cycles"] <= x["total_cycles"], name


def test_hadamard_adds_from_the_structure():
    assert hadamard_adds(64) == 64 * 6  # six butterfly stages of 64 add/subtracts
    assert hadamard_adds(1) == 0
    # 11008 = 172 x 64 (172 is the smallest order the K stage builds): six butterfly stages, then each output a
    # +-sum of 172 inputs
    assert hadamard_adds(11008) == 11008 * 6 + 11008 * 171
    assert hadamard_adds(1536) == 1536 * 7 + 1536 * 11  # 12 x 128


def test_bad_input_one_line_errors():
    tiny = load_arch("edge", {"buffers.weight.kib": 0.05})
    with pytest.raises(QiftError, match="weight buffer too small for one tile") as e:
        _one(tiny, Op("g", "linear", 4, 4096, 4096, 1, "int8"))
    assert "\n" not in str(e.value)
    with pytest.raises(QiftError, match="out buffer too small") as e:
        _one(load_arch("edge", {"buffers.out.kib": 0.01}), Op("g", "linear", 4, 64, 64, 1, "int8"))
    with pytest.raises(QiftError, match="M must be >= 1") as e:
        _one(load_arch("edge"), Op("g", "linear", 0, 64, 64, 1, "int8"))
    assert "\n" not in str(e.value)
    with pytest.raises(QiftError, match="scalesim"):
        _one(load_arch("edge", {"timing": "scalesim"}), Op("g", "linear", 1, 64, 64, 1, "int8"))


def test_estimate_point_carries_its_parameters():
    rows = estimate_point({"arch": "edge", "set": {"array.rows": 16}, "model": "smollm2", "levels": "int4",
                           "phase": "decode", "seqlen": 64, "batch": 2})
    assert len(rows) == 1
    r = rows[0]
    assert r["array.rows"] == 16 and r["levels"] == "int4" and r["batch"] == 2 and r["tokens"] == 2
    assert r["array_cells"] and "int4" in r["area_source"]
