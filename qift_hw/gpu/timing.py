"""GPU timing that reflects decode: CUDA graphs of back-to-back calls over rotating weight copies.

A decode step streams each weight from HBM once, so timing one layer in a loop would measure the 50 MB L2
instead. Each timed graph replays ``calls`` launches that cycle through enough copies of the weights to
exceed the L2 several times over; CUDA events around the replay, median over replays, divided by calls.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch

NOMINAL_BW = [("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12), ("H200", 4.8e12), ("H800", 3.35e12),
              ("A100-SXM4-80GB", 2.04e12), ("A100", 1.55e12), ("L40S", 0.864e12), ("L4", 0.3e12)]
"""Datasheet HBM bandwidth (bytes/s) by device-name substring; first match wins (H100 PCIe before H100)."""


def nominal_bandwidth(name: str) -> float | None:
    """Datasheet memory bandwidth for a device name, or None if it is not in the table."""
    for key, bw in NOMINAL_BW:
        if key.lower() in name.lower():
            return bw
    return None


def device_info() -> dict:
    """Name, SM count, L2 size, memory and versions of the current CUDA device."""
    p = torch.cuda.get_device_properties(0)
    import triton

    return {"name": p.name, "sm_count": p.multi_processor_count, "l2_bytes": int(getattr(p, "L2_cache_size", 0)),
            "memory_bytes": int(p.total_memory), "capability": f"{p.major}.{p.minor}",
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
            "nominal_bandwidth": nominal_bandwidth(p.name)}


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Measured device-to-device copy bandwidth, counting bytes read plus bytes written (bytes/s)."""
    a = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda").normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) * 1e-3)
    del a, b
    return 2 * (nbytes // 2) * 2 / statistics.median(times)


def copies_needed(nbytes: int, l2_bytes: int, max_copies: int = 256) -> int:
    """How many weight copies make one pass over them at least 3x the L2 (capped)."""
    return max(2, min(max_copies, math.ceil(3 * l2_bytes / max(nbytes, 1))))


def time_graph(step: Callable[[int], object], n_variants: int, calls: int | None = None, replays: int = 15,
               warmup: int = 3) -> dict:
    """Seconds per call of ``step(i)`` (i cycles over n_variants), timed as a captured CUDA graph.

    ``step`` is warmed up first (compilation, cuBLAS handles), then ``calls`` launches are captured into one
    graph; returns the median, min and max seconds per call over ``replays`` replays.
    """
    calls = calls or max(n_variants, 32)
    for i in range(max(warmup, 1) * min(n_variants, 4)):
        step(i % n_variants)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(min(n_variants, 4)):
            step(i)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            step(i % n_variants)
    g.replay()
    torch.cuda.synchronize()
    per = []
    for _ in range(replays):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        torch.cuda.synchronize()
        per.append(s.elapsed_time(e) * 1e-3 / calls)
    del g
    return {"s": statistics.median(per), "min_s": min(per), "max_s": max(per), "calls": calls, "replays": replays}
