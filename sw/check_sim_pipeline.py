"""Check the bit-accurate model against the PyTorch pipeline on the real quantized SmolLM2 (GPTQ codes).

1. Quantize SmolLM2-135M (rotation, GPTQ W2 with the chosen level set, A4, KV4) with a small calibration set
   (resumable: per-layer checkpoints in --run-dir).
2. Every W2 linear, on the inputs it sees for one evaluation window: integer accumulators vs an independent torch
   int64 product, and dequantized outputs vs the fake-quant outputs as a fraction of the FP32 rounding bound.
3. Perplexity on --windows evaluation windows: fake-quant path (dequantized FP32 product), the same with float64
   products (a control), the PyTorch integer-product mode (`qift-hw eval --backend int`), then every W2 linear
   through the integer model with the float Hadamard (same INT4 codes as the pipeline; must equal the
   integer-product mode exactly) and with the integer Hadamard unit; with timings.

    .venv/bin/python sw/check_sim_pipeline.py [--levels pot_mnz] [--windows 8] [--seqlen 512]
        [--scale-method mse] [--w2-layers all] [--other-bits 16] [--out docs/results/sim_vs_pipeline.json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def code_flips(model, weights, ids) -> list[dict]:
    """Per QLinear: how far its input drifts, and how many of its INT4 codes move, when the W2 linears run in
    the integer model (float Hadamard) instead of the fake-quant path, on the same tokens."""
    import torch

    from qift_hw.core import formats
    from qift_hw.bridge.sim_backend import install_sim_backend, remove_sim_backend
    from qift_hw.core.hadamard import hadamard_transform
    from qift_hw.algo.qmodel import iter_qlinears

    def capture():
        seen, hooks = {}, []
        for name, q in iter_qlinears(model):
            hooks.append(q.register_forward_pre_hook(
                lambda m, a, n=name: seen.__setitem__(n, a[0].detach().reshape(-1, m.in_features).clone())))
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        for h in hooks:
            h.remove()
        return seen

    ref = capture()
    install_sim_backend(model, weights, hadamard="float")
    sim = capture()
    remove_sim_backend(model)
    rows = []
    for name, q in iter_qlinears(model):
        xs = [hadamard_transform(x, normalize=True) if q.online_hadamard else x for x in (ref[name], sim[name])]
        (qa, _), (qb, _) = (formats.quantize_act(x, q.a_bits, q.a_clip) for x in xs)
        rows.append({"layer": name, "input_rel_diff": float((ref[name] - sim[name]).norm() / ref[name].norm()),
                     "codes_moved": float((qa != qb).float().mean())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="pot_mnz", help="2-bit level set for the W2 layers")
    ap.add_argument("--method", default="gptq", help="gptq or rtn")
    ap.add_argument("--scale-method", default="mse", help="mse (clip search, slow on a busy machine) or maxabs")
    ap.add_argument("--w2-layers", default="all", help="which decoder layers are W2 (see qift_hw.algo.mixed)")
    ap.add_argument("--other-bits", type=int, default=16, help="weight bits of the other layers (16 = float)")
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--windows", type=int, default=8, help="evaluation windows")
    ap.add_argument("--seqlen", type=int, default=512, help="evaluation window length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run-dir", type=Path, default=Path("out/sim_check_run"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/sim_vs_pipeline.json"))
    ap.add_argument("--flips-only", action="store_true",
                    help="only add the per-layer INT4 code movement (fake-quant vs sim) to an existing --out JSON")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from qift_hw.bridge.sim_backend import compare_linears, float64_linears, install_sim_backend, remove_sim_backend
    from qift_hw.algo.data import eval_windows
    from qift_hw.algo.evaluate import evaluate_ppl
    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance
    from qift_hw.algo.models import load_model
    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.quantize import quantize_model
    from qift_hw.algo.quantized import set_integer_products

    torch.set_num_threads(args.threads)
    model, tok = load_model(None)
    cfg = QuantConfig(levels=args.levels, method=args.method, scale_method=args.scale_method,
                      w2_layers=args.w2_layers, other_bits=args.other_bits, calib_windows=args.calib_windows,
                      calib_seqlen=args.calib_seqlen)
    t0 = time.perf_counter()
    qm = quantize_model(model, tok, cfg, run_dir=args.run_dir, model_id="smollm2")
    t_quant = time.perf_counter() - t0
    evalw = eval_windows(tok, "pydoc", args.seqlen, args.windows)

    flips = code_flips(qm.model, qm.weights, evalw[:1])
    if args.flips_only:
        import json

        data = json.loads(args.out.read_text())
        data["code_flips"] = flips
        data["provenance"] = provenance()
        write_json(args.out, data)
        print(f"first layer with moved codes: {next((r['layer'] for r in flips if r['codes_moved']), None)}; "
              f"wrote {args.out}")
        return
    rows = compare_linears(qm.model, qm.weights, evalw[:1], hadamard="unit")
    print(f"{len(rows)} W2 linears: accumulators exact in {sum(r['acc_exact'] for r in rows)}; "
          f"worst |diff| / bound = {max(r['max_diff_over_bound'] for r in rows):.3f}")

    res = {}
    t0 = time.perf_counter()
    res["fake_quant"] = {"ppl": evaluate_ppl(qm.model, evalw), "seconds": time.perf_counter() - t0}
    with float64_linears(qm.model):  # control: the same fake-quant model with exact (float64) products
        t0 = time.perf_counter()
        res["fake_quant_float64_products"] = {"ppl": evaluate_ppl(qm.model, evalw),
                                              "seconds": time.perf_counter() - t0}
    set_integer_products(qm.model, qm.weights)
    t0 = time.perf_counter()
    res["int_products"] = {"ppl": evaluate_ppl(qm.model, evalw), "seconds": time.perf_counter() - t0}
    set_integer_products(qm.model, qm.weights, on=False)
    for mode in ("float", "unit"):
        names = install_sim_backend(qm.model, qm.weights, hadamard=mode)
        t0 = time.perf_counter()
        ppl = evaluate_ppl(qm.model, evalw)
        res[f"sim_{mode}_hadamard"] = {"ppl": ppl, "seconds": time.perf_counter() - t0, "layers": len(names)}
        remove_sim_backend(qm.model)
    base = res["fake_quant"]["ppl"]
    for k, v in list(res.items()):
        v["rel_diff_vs_fake_quant"] = (v["ppl"] - base) / base
        v["time_ratio_vs_fake_quant"] = v["seconds"] / res["fake_quant"]["seconds"]
        print(f"{k:22s} ppl {v['ppl']:.4f}  rel diff {v['rel_diff_vs_fake_quant']:+.2e}  {v['seconds']:.1f} s "
              f"({v['time_ratio_vs_fake_quant']:.2f}x)")
    res["sim_float_equals_int_products"] = res["sim_float_hadamard"]["ppl"] == res["int_products"]["ppl"]
    print(f"sim (float Hadamard) == PyTorch integer products, bit for bit: {res['sim_float_equals_int_products']}")
    moved = [r["unit_codes_moved"] for r in rows if "unit_codes_moved" in r]
    write_json(args.out, {"provenance": provenance(), "config": cfg.to_dict(), "quantize_seconds": t_quant,
                          "eval_windows": args.windows,
                          "eval_seqlen": args.seqlen, "threads": args.threads,
                          "linears": {"count": len(rows), "all_acc_exact": all(r["acc_exact"] for r in rows),
                                      "worst_diff_over_bound": max(r["max_diff_over_bound"] for r in rows),
                                      "mean_unit_codes_moved": sum(moved) / len(moved) if moved else None,
                                      "rows": rows},
                          "perplexity": res, "code_flips": flips})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
