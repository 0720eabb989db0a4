"""cocotb bench of the accelerator tile (qift_hw.rtl.tile): loads, commands and drains with random back-pressure.

One event loop at each falling edge plays three stream partners and the stall input: the producer presents the
jobs' load beats and commands (valid raised with probability ``valid_prob`` and then held until ready, the
stream rule), the consumer takes drain beats when it raises ready (probability ``ready_prob``), ``hold`` stalls the
array with probability ``hold_prob`` while it runs. The producer starts a job's loads as soon as the previous
command was taken, so they wait while the tile is busy (back-pressure on ``load`` and ``cmd``). A job with
``reset_after`` gets a synchronous reset that many advancing cycles into its run and gives no outputs. Every
output is compared with the expected values and flags, and the ``cycles`` count with the closed form. Functional
coverage (cocotb-coverage): code x activation x PE position of the MACs, sequencer states and transitions,
back-pressure per port, partial tiles and saturation; written as coverage.yml / coverage.xml beside summary.json.
"""

from __future__ import annotations

import math
import time

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge
from cocotb.utils import get_sim_time
from cocotb_coverage.coverage import CoverCross, CoverPoint, coverage_db

from _bench import PERIOD_NS, start, stimulus, write_summary

PORTS = ("cmd", "load", "drain", "hold")
FEATURES = ("partial_k", "partial_n", "partial_m", "short_m", "saturates", "reset_mid_run")


def _coverage(R: int, C: int, states: list[str]):
    """Sampling functions of the tile's cover points (bins depend on the array size)."""
    pos = [(r, c) for r in range(R) for c in range(C)]

    @CoverPoint("tile.mac.code", xf=lambda code, act, p: code, bins=list(range(4)))
    @CoverPoint("tile.mac.act", xf=lambda code, act, p: act, bins=list(range(-8, 8)))
    @CoverPoint("tile.mac.position", xf=lambda code, act, p: p, bins=pos)
    @CoverCross("tile.mac.code_x_act_x_position", items=["tile.mac.code", "tile.mac.act", "tile.mac.position"])
    def mac(code, act, p):
        pass

    legal = [("idle", "preload"), ("preload", "tiles"), ("tiles", "flush"), ("flush", "drain"), ("drain", "idle"),
             ("tiles", "idle")]

    @CoverPoint("tile.seq.state", xf=lambda a, b: b, bins=states)
    @CoverPoint("tile.seq.transition", xf=lambda a, b: (a, b), bins=legal)
    def state(a, b):
        pass

    @CoverPoint("tile.stream.backpressure", bins=list(PORTS))
    def stall(port):
        pass

    @CoverPoint("tile.job.feature", bins=list(FEATURES))
    def feature(name):
        pass

    return mac, state, stall, feature


def _mac_bins(acts: np.ndarray, codes: np.ndarray, R: int, C: int) -> np.ndarray:
    """Distinct (code, activation, r, c) of the real MACs: PE(k mod R, n mod C) multiplies A[m, k] by W[n, k]."""
    M, K = acts.shape
    N = codes.shape[0]
    k = np.arange(K)
    rows = []
    for n in range(N):
        a = acts.reshape(-1)
        rows.append(np.stack([np.tile(codes[n], M), a, np.tile(k % R, M), np.full(M * K, n % C)], axis=1))
    return np.unique(np.concatenate(rows), axis=0)


@cocotb.test()
async def tile_jobs(dut):
    """Run every job of the case and compare outputs and cycles."""
    folder, config, arrays = stimulus()
    R, C, A = config["rows"], config["cols"], config["acc_bits"]
    states = config["states"]
    rng = np.random.default_rng(config["seed"])
    hold_p, valid_p, ready_p = config["hold_prob"], config["valid_prob"], config["ready_prob"]
    jobs = config["jobs"]
    mac_cov, state_cov, stall_cov, feature_cov = _coverage(R, C, states)
    seen = set()
    for i, job in enumerate(jobs):
        for f in FEATURES:
            if job["coverage"].get(f) or (f == "reset_mid_run" and job["reset_after"] is not None):
                feature_cov(f)
        a, w = arrays[f"acts{i}"], arrays[f"codes{i}"]
        key = (a.tobytes(), w.tobytes())
        if key not in seen:
            seen.add(key)
            for code, act, r, c in _mac_bins(a, w, R, C):
                mac_cov(int(code), int(act), (int(r), int(c)))

    await start(dut, ["cmd__valid", "cmd__payload", "load__valid", "load__payload", "drain__ready", "hold"])
    # producer items: per job its load beats then its command
    items = []
    for i, job in enumerate(jobs):
        items += [("load", int(x), i) for x in arrays[f"load{i}"]] + [("cmd", int(job["cmd"]), i)]
    limit = sum(3 * j["cycles"] + 4 * j["M"] * math.ceil(j["N"] / C) for j in jobs) + 4 * len(items) + 2000
    pi, presenting = 0, False
    pending: list[int] = []  # jobs whose command was taken, in order, awaiting their drain
    beats: list[int] = []
    reset_job = None
    results, errors = [], []
    taken_at = {}
    prev_state = 0
    cycle = 0
    free_s, free_cycles = 0.0, 0  # time and cycles the simulator ran on its own (no Python per cycle)
    t0 = time.perf_counter()
    while (pi < len(items) or pending or reset_job is not None) and cycle < limit:
        st = int(dut.state.value)
        if st != prev_state:
            state_cov(states[prev_state], states[st])
            prev_state = st
        running = 1 <= st <= 3
        # stall input
        hold = int(running and rng.random() < hold_p)
        dut.hold.value = hold
        if hold:
            stall_cov("hold")
        # reset in the middle of a run
        if reset_job is not None and running and int(dut.cycles.value) >= jobs[reset_job]["reset_after"]:
            dut.rst.value = 1
            dut.hold.value = 0
            await FallingEdge(dut.clk)
            dut.rst.value = 0
            cycle += 1
            state_cov(states[st], "idle")
            results.append({"job": reset_job, "reset": True, "at_cycles": jobs[reset_job]["reset_after"]})
            reset_job = None
            prev_state = 0
            continue
        # back-to-back loads into an idle tile without gaps: one write and one edge per beat
        if valid_p >= 1 and st == 0 and not pending and reset_job is None and not presenting:
            start_pi = pi
            while pi < len(items) and items[pi][0] == "load":
                dut.load__payload.value = items[pi][1]
                dut.load__valid.value = 1
                await FallingEdge(dut.clk)
                pi += 1
            if pi > start_pi:
                dut.load__valid.value = 0
                cycle += pi - start_pi
                continue
        # producer (paused while a reset is due)
        accepted = None
        if pi < len(items) and reset_job is None:
            kind, payload, j = items[pi]
            if not presenting and rng.random() < valid_p:
                presenting = True
                getattr(dut, f"{kind}__payload").value = payload
                getattr(dut, f"{kind}__valid").value = 1
            if presenting:
                if int(getattr(dut, f"{kind}__ready").value):
                    accepted = (kind, j)
                else:
                    stall_cov(kind)
        # consumer
        ready = int(rng.random() < ready_p) if pending else 0
        dut.drain__ready.value = ready
        if int(dut.drain__valid.value):
            if ready:
                beats.append(dut.drain__payload.value.to_unsigned())
                j = pending[0]
                if len(beats) == jobs[j]["M"] * math.ceil(jobs[j]["N"] / C):
                    results.append(_check(j, jobs[j], beats, int(dut.cycles.value), arrays, C, A, errors,
                                          cycle + 1 - taken_at[j]))
                    beats, pending = [], pending[1:]
            else:
                stall_cov("drain")
        await FallingEdge(dut.clk)
        cycle += 1
        if accepted is not None:
            kind, j = accepted
            getattr(dut, f"{kind}__valid").value = 0
            presenting = False
            pi += 1
            if kind == "cmd":
                taken_at[j] = cycle
                if jobs[j]["reset_after"] is None:
                    pending.append(j)
                else:
                    reset_job = j
        # nothing to do until the drain starts: skip the per-cycle loop
        if (hold_p == 0 and reset_job is None and pending and not presenting and pi >= len(items)
                and int(dut.state.value) in (1, 2, 3)):
            t_run = time.perf_counter()
            await RisingEdge(dut.drain__valid)
            await FallingEdge(dut.clk)
            now = int(get_sim_time("ns")) // PERIOD_NS
            free_s += time.perf_counter() - t_run
            free_cycles += now - cycle
            cycle = now
    loop_s = time.perf_counter() - t0
    if cycle >= limit:
        errors.append(f"timeout after {cycle} cycles: {len(items) - pi} items unsent, jobs {pending} undrained")
    coverage_db.export_to_yaml(filename=str(folder / "coverage.yml"))
    coverage_db.export_to_xml(filename=str(folder / "coverage.xml"))
    cov = {name: {"covered": int(coverage_db[name].coverage), "size": int(coverage_db[name].size)}
           for name in ("tile.mac.code_x_act_x_position", "tile.mac.code", "tile.mac.act", "tile.mac.position",
                        "tile.seq.state", "tile.seq.transition", "tile.stream.backpressure", "tile.job.feature")}
    write_summary(folder, {"jobs": results, "sim_cycles": cycle, "loop_s": loop_s,
                           "free_cycles": free_cycles, "free_s": free_s, "mismatches": len(errors),
                           "first_mismatch": errors[0] if errors else "", "coverage": cov})
    assert not errors, "\n".join(errors[:20])


def _check(j: int, job: dict, beats: list[int], cycles: int, arrays: dict, C: int, A: int, errors: list[str],
           wall: int) -> dict:
    """Compare one job's drained outputs and its cycle count; returns the job's result row."""
    from qift_hw.verify.tile_cases import unpack_drain

    M, N = job["M"], job["N"]
    vals, flags = unpack_drain(beats, M, N, C, A)
    exp, exp_ovf = arrays[f"exp{j}"], arrays[f"ovf{j}"]
    bad = np.argwhere((vals != exp) | (flags != exp_ovf))
    for m, n in bad[:5]:
        errors.append(f"job {j}: output ({m}, {n}) = {vals[m, n]} ovf {flags[m, n]}, expected {exp[m, n]} "
                      f"ovf {exp_ovf[m, n]}")
    if cycles != job["cycles"]:
        errors.append(f"job {j}: {cycles} advancing cycles, the v2 model's closed form gives {job['cycles']}")
    return {"job": j, "M": M, "K": job["K"], "N": N, "outputs": int(M * N), "wrong": int(len(bad)),
            "cycles": cycles, "expected_cycles": job["cycles"], "wall_cycles": wall,
            "saturated": int(exp_ovf.sum())}
