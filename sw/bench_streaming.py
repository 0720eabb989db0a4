"""Benchmark: peak memory of the streaming (layer by layer) pipeline against the size of the model it runs.

Runs `qift_hw.algo.streaming.stream_run` on a HF LLaMA folder (e.g. the random LLaMA-2-7B-width checkpoint of
`sw/make_big_random_llama.py`): quantization of the chosen layers (``--method``, ``--w2-layers``,
``--other-bits 16`` keeps the others float; GPTQ calibrates on ``--calib-windows`` random-token windows of
``--calib-seqlen``) and perplexity over ``--eval-windows`` windows of ``--seqlen`` through every layer. Random
token ids stand in for text (a random-weight model has no tokenizer; the figure is memory, not accuracy).

Memory: the peak resident set of this process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the highest
VmRSS sampled from /proc/self/status every 0.1 s and after each layer, against the model's bytes on disk and in
float32 (the dtype the pipeline computes in). The load average is recorded beside the timings.

    .venv/bin/python sw/make_big_random_llama.py runs/big_random --layers 32
    .venv/bin/python sw/bench_streaming.py runs/big_random --out docs/results/bench_streaming.json
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time
from pathlib import Path

import torch


def status_bytes(field: str = "VmRSS") -> int:
    """A memory field of /proc/self/status (VmRSS, RssAnon: private memory, RssFile: mapped file pages), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def vmrss_bytes() -> int:
    return status_bytes("VmRSS")


class RssSampler:
    """Highest VmRSS seen by a background thread (every `period` s) and by explicit `sample()` calls."""

    def __init__(self, period: float = 0.1) -> None:
        self.peak = vmrss_bytes()
        self.per_layer: list[int] = []
        self.anon_per_layer: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.sample()

    def sample(self) -> int:
        rss = vmrss_bytes()
        self.peak = max(self.peak, rss)
        return rss

    def on_layer(self, i: int) -> None:
        self.per_layer.append(self.sample())
        self.anon_per_layer.append(status_bytes("RssAnon"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="HF LLaMA checkpoint folder")
    ap.add_argument("--method", choices=("rtn", "gptq"), default="rtn")
    ap.add_argument("--levels", default="mnz")
    ap.add_argument("--w2-layers", default="first:1")
    ap.add_argument("--other-bits", type=int, default=16)
    ap.add_argument("--scale-method", choices=("mse", "maxabs"), default="maxabs")
    ap.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=False,
                    help="QuaRot rotation per layer (float64, ~1.6 TFLOP per 7B-width layer: slow on a small CPU)")
    ap.add_argument("--calib-windows", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=128)
    ap.add_argument("--eval-windows", type=int, default=1)
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-checkpoint", type=Path, default=None, help="also write the qift-1 shards here")
    ap.add_argument("--out", type=Path, default=None, help="save the figures as JSON (with provenance)")
    a = ap.parse_args()

    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.streaming import ShardedCheckpoint, stream_run
    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance

    if a.threads:
        torch.set_num_threads(a.threads)
    ckpt = ShardedCheckpoint(a.model)
    import json

    cfg_json = json.loads((a.model / "config.json").read_text())
    vocab = int(cfg_json["vocab_size"])
    fp32_bytes = sum(_numel(ckpt, k) for k in ckpt.weight_map) * 4
    cfg = QuantConfig(levels=a.levels, method=a.method, w2_layers=a.w2_layers, other_bits=a.other_bits,
                      rotate=a.rotate, scale_method=a.scale_method, calib_windows=a.calib_windows, calib_seqlen=a.calib_seqlen, batch_size=1)
    gen = torch.Generator().manual_seed(0)
    calib = torch.randint(0, vocab, (a.calib_windows, a.calib_seqlen), generator=gen)
    ev = torch.randint(0, vocab, (a.eval_windows, a.seqlen), generator=gen)
    rss_start = vmrss_bytes()
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    with RssSampler() as sampler:
        res = stream_run(a.model, cfg, calib=calib if a.method == "gptq" else None, eval_windows=ev,
                         out=a.out_checkpoint, progress=True, on_layer=sampler.on_layer)
    wall = time.perf_counter() - t0
    ru_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_layers = int(cfg_json["num_hidden_layers"])
    layer_fp32 = sum(_numel(ckpt, k) for k in ckpt.weight_map if k.startswith("model.layers.0.")) * 4
    result = {
        "model": str(a.model), "layers": n_layers, "hidden": cfg_json["hidden_size"],
        "intermediate": cfg_json["intermediate_size"], "heads": cfg_json["num_attention_heads"],
        "model_bytes_on_disk": ckpt.nbytes(), "model_bytes_fp32": fp32_bytes, "layer_bytes_fp32": layer_fp32,
        "machine_ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "peak_rss_ru_maxrss_bytes": ru_max, "peak_vmrss_sampled_bytes": sampler.peak,
        "rss_before_run_bytes": rss_start, "vmrss_after_each_layer_bytes": sampler.per_layer,
        "rssanon_after_each_layer_bytes": sampler.anon_per_layer,
        "peak_over_model_fp32": ru_max / fp32_bytes, "peak_over_layer_fp32": ru_max / layer_fp32,
        "config": cfg.to_dict(), "w2_layers": res.w2_layers, "eval_windows": a.eval_windows, "seqlen": a.seqlen,
        "ppl_random_tokens": res.ppl, "timings_s": {k: round(v, 2) for k, v in res.timings.items()},
        "wall_s": round(wall, 1), "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()], "threads": torch.get_num_threads(),
    }
    gib = 2**30
    print(f"model {result['model_bytes_fp32'] / gib:.2f} GiB in float32 ({ckpt.nbytes() / gib:.2f} GiB on disk, "
          f"RAM {result['machine_ram_bytes'] / gib:.1f} GiB); peak RSS {ru_max / gib:.2f} GiB (ru_maxrss), "
          f"{sampler.peak / gib:.2f} GiB (sampled VmRSS) = {result['peak_over_model_fp32']:.3f} of the model, "
          f"{result['peak_over_layer_fp32']:.2f} layers; {wall:.0f} s, load {result['loadavg_end']}")
    if a.out is not None:
        write_json(a.out, {"provenance": provenance(), **result})
        print(f"wrote {a.out}")


def _numel(ckpt, key: str) -> int:
    from safetensors import safe_open

    with safe_open(str(ckpt.folder / ckpt.weight_map[key]), "pt") as f:
        shape = f.get_slice(key).get_shape()
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    main()
