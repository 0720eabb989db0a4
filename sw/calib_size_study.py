"""Why std W2 GPTQ degrades with few calibration tokens: per-linear diagnostics at 8..128 calibration windows.

Loads the model (default: the embedded SmolLM2-135M), rotates it and switches on the A4KV4 forward as the pipeline
does (`prepare_model`), samples the calibration windows as the pipeline does (`get_windows`, seed 0) and captures
the inputs of a few linears (one early, one middle and one late layer; q_proj and down_proj). Each linear's float
weight is then quantized by GPTQ against the Hessian of the first n windows, for each level set and n, and
measured on held-out inputs (the evaluation split): see `qift_hw.study.calib_study`. The inputs are those of the
float (rotated) model, not of a model whose earlier layers are already quantized, so the study isolates each
linear's own sensitivity to calibration size; the pipeline's end-to-end perplexity compounds it over layers.

    .venv/bin/python sw/calib_size_study.py --quick
    .venv/bin/python sw/calib_size_study.py --out docs/results/calib_study
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ("std", "mnz", "pot_mnz")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model spec as `qift-hw eval --model` takes (default: SmolLM2)")
    p.add_argument("--text", default="pydoc", help="calibration/evaluation text (default: the embedded one)")
    p.add_argument("--windows", default="8,16,32,64,128", help="calibration window counts (nested prefixes)")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--held-out", type=int, default=8, help="evaluation windows for the held-out error")
    p.add_argument("--layers", default="1,15,28")
    p.add_argument("--kinds", default="q_proj,down_proj")
    p.add_argument("--levels", default=",".join(SETS))
    p.add_argument("--remedy-windows", type=int, default=16, help="window count the remedies are tried at")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="8 and 16 windows of 128 tokens, layer 1 only")
    p.add_argument("--out", default=None, help="folder for calib_study.json, calib_study.png and calib_study.md")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="only redraw the figure and tables of a saved calib_study.json (into --out or its folder)")
    a = p.parse_args(argv)
    if a.quick:
        a.windows, a.seqlen, a.held_out, a.layers, a.remedy_windows = "8,16", 128, 2, "1", 16
    return a


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def summarise(res: dict) -> list[dict]:
    """Mean over the studied linears of the held-out error per level set and window count, with the RTN value."""
    rows = []
    rtn = {}
    for r in res["rtn"]:
        rtn.setdefault(r["levels"], []).append(r["held_out_err"])
    keys = sorted({(r["levels"], r["windows"]) for r in res["gptq"]}, key=lambda k: (k[0], k[1]))
    for ls, n in keys:
        sel = [r for r in res["gptq"] if r["levels"] == ls and r["windows"] == n]
        rows.append({"levels": ls, "windows": n,
                     "held_out_err": sum(r["held_out_err"] for r in sel) / len(sel),
                     "calib_err": sum(r["calib_err"] for r in sel) / len(sel),
                     "rtn_held_out_err": sum(rtn[ls]) / len(rtn[ls])})
    return rows


def short(name: str) -> str:
    return name.replace("model.layers.", "L").replace("self_attn.", "").replace("mlp.", "")


def tables(res: dict) -> str:
    """Markdown tables: held-out error by linear, level set and calibration size; spectra; remedies; clipping."""
    sizes = res["windows"]
    sets = list(dict.fromkeys(r["levels"] for r in res["gptq"]))
    linears = list(dict.fromkeys(r["linear"] for r in res["gptq"]))
    g = {(r["linear"], r["levels"], r["windows"]): r for r in res["gptq"]}
    rtn = {(r["linear"], r["levels"]): r for r in res["rtn"]}
    head = "| linear | set | " + " | ".join(f"{n} win" for n in sizes) + " | RTN |"
    out = ["Held-out relative output error ||WX-QX||/||WX|| (GPTQ; in brackets held-out / calibration error)", "",
           head, "|---|---|" + "---:|" * (len(sizes) + 1)]
    for lin in linears:
        for ls in sets:
            cells = [f"{g[lin, ls, n]['held_out_err']:.3f} ({g[lin, ls, n]['held_out_err'] / g[lin, ls, n]['calib_err']:.2f})"
                     for n in sizes]
            out.append(f"| {short(lin)} | {ls} | " + " | ".join(cells) + f" | {rtn[lin, ls]['held_out_err']:.3f} |")
    out += ["", "Hessian spectrum: cond(H), cond(H + damping), eigenvalues below the damping shift, damping retries "
            "(max over the level sets)", "", "| linear | windows | tokens | cond(H) | cond(H+damp) | eig < damp | "
            "near-zero eig | retries |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["spectra"]:
        retries = max(g[r["linear"], ls, r["windows"]]["damp_retries"] for ls in sets)
        out.append(f"| {short(r['linear'])} | {r['windows']} | {r['windows'] * res['seqlen']} | {r['cond']:.3g} | "
                   f"{r['cond_damped']:.3g} | {r['n_below_damp']} | {r['n_near_zero']} | {retries} |")
    out += ["", "Error feedback at the smallest and largest size: share of pre-rounding weights above the top level / "
            "below the bottom level, share of the rounding error they carry, ||W'-W||/||W|| (RTN: of W itself)", "",
            "| linear | set | windows | above top | below bottom | clip error share | feedback shift |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for lin in linears:
        for ls in sets:
            r0 = rtn[lin, ls]
            if "above_top" in r0:
                out.append(f"| {short(lin)} | {ls} | RTN | {r0['above_top']:.3f} | {r0['below_bottom']:.3f} | "
                           f"{r0['clip_err_share']:.2f} | - |")
            for n in (sizes[0], sizes[-1]):
                r = g[lin, ls, n]
                if "above_top" in r:
                    out.append(f"| {short(lin)} | {ls} | {n} | {r['above_top']:.3f} | {r['below_bottom']:.3f} | "
                               f"{r['clip_err_share']:.2f} | {r['feedback_shift']:.3f} |")
    if res["remedies"]:
        n = res["remedies"][0]["windows"]
        out += ["", f"Remedies at {n} windows: held-out error (damp = fraction of mean diag H)", "",
                "| linear | set | damp 0.01 | " + " | ".join(
                    f"damp {r['damp']}" if not r.get("act_order") else "act-order" for r in res["remedy_list"])
                + f" | {sizes[-1]} win, damp 0.01 |", "|---|---|" + "---:|" * (len(res["remedy_list"]) + 2)]
        for lin in linears:
            for ls in sets:
                rs = [r for r in res["remedies"] if r["linear"] == lin and r["levels"] == ls]
                out.append(f"| {short(lin)} | {ls} | {g[lin, ls, n]['held_out_err']:.3f} | "
                           + " | ".join(f"{r['held_out_err']:.3f}" for r in rs)
                           + f" | {g[lin, ls, sizes[-1]]['held_out_err']:.3f} |")
    return "\n".join(out) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qift_hw.core.io import save_figure

    linears = list(dict.fromkeys(r["linear"] for r in res["gptq"]))
    sets = list(dict.fromkeys(r["levels"] for r in res["gptq"]))
    colors = dict(zip(sets, ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange")))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for lin in linears:
        for ls in sets:
            pts = sorted((r["windows"] * res["seqlen"], r["held_out_err"]) for r in res["gptq"]
                         if r["linear"] == lin and r["levels"] == ls)
            ax.plot(*zip(*pts), color=colors[ls], alpha=0.55, marker=".",
                    ls="-" if "down" in lin else "--")
    for ls in sets:
        ax.plot([], [], color=colors[ls], label=ls)
    ax.plot([], [], color="k", ls="-", label="down_proj")
    ax.plot([], [], color="k", ls="--", label="q_proj")
    ax.set(xscale="log", yscale="log", xlabel="calibration tokens", ylabel="held-out ||WX-QX|| / ||WX||",
           title="GPTQ layer error on held-out tokens")
    ax.legend(fontsize=8, ncol=2)
    ax = axes[1]
    for ls in sets:
        s = sorted((r["windows"] * res["seqlen"], r["held_out_err"] / max(r["calib_err"], 1e-12))
                   for r in res["gptq"] if r["levels"] == ls)
        by = {}
        for t, v in s:
            by.setdefault(t, []).append(v)
        ax.plot(list(by), [sum(v) / len(v) for v in by.values()], color=colors[ls], marker="o", label=ls)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xscale="log", xlabel="calibration tokens", ylabel="held-out / calibration error (mean over linears)",
           title="Overfitting of GPTQ's error feedback")
    ax.legend(fontsize=8)
    ax = axes[2]
    for lin in linears:
        pts = sorted((r["windows"] * res["seqlen"], r["cond_damped"]) for r in res["spectra"] if r["linear"] == lin)
        ax.plot(*zip(*pts), marker=".", label=short(lin))
    ax.set(xscale="log", yscale="log", xlabel="calibration tokens", ylabel="cond(H + damping)",
           title="Hessian conditioning (damp 0.01 mean diag)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def write_outputs(res: dict, out: Path) -> None:
    from qift_hw.core.io import write_text

    plot(res, out / "calib_study.png")
    write_text(out / "calib_study.md", tables(res))


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.report:
        import json

        write_outputs(json.loads(Path(a.report).read_text()), Path(a.out or Path(a.report).parent))
        return 0
    import torch

    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.data import get_windows
    from qift_hw.algo.models import load_model
    from qift_hw.algo.prepare import prepare_model
    from qift_hw.core.io import write_json
    from qift_hw.core.provenance import provenance
    from qift_hw.study.calib_study import capture_study_inputs, pick_linears, study

    torch.set_num_threads(a.threads)
    sizes = ints(a.windows)
    t0 = time.perf_counter()
    model, tok = load_model(a.model)
    cfg = QuantConfig()
    prepare_model(model, cfg)
    calib = get_windows(tok, a.text, "calib", a.seqlen, max(sizes), a.seed)
    held = get_windows(tok, a.text, "eval", a.seqlen, a.held_out)
    lins = pick_linears(model, ints(a.layers), a.kinds.split(","))
    captured = capture_study_inputs(model, lins, calib, held, sizes)
    t_cap = time.perf_counter() - t0
    print(f"captured {len(lins)} linears in {t_cap:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    remedies = [{"damp": 0.1}, {"damp": 1.0}, {"act_order": True}]
    res = study(captured, a.levels.split(","), cfg.damp, a.remedy_windows if a.remedy_windows in sizes else None,
                remedies, progress=lambda *x: print(*x, flush=True))
    res.update({"seqlen": a.seqlen, "windows": sizes, "held_out_tokens": a.held_out * a.seqlen,
                "remedy_list": remedies, "config": {"a_bits": cfg.a_bits, "kv_bits": cfg.kv_bits,
                                                    "scale_method": cfg.scale_method, "blocksize": cfg.blocksize,
                                                    "damp": cfg.damp, "rotate": cfg.rotate},
                "summary": summarise(res), "seconds": time.perf_counter() - t0,
                "loadavg": list(os.getloadavg()), "provenance": provenance()})
    for r in res["summary"]:
        print(f"{r['levels']:8s} {r['windows']:4d}  held-out {r['held_out_err']:.4f}  calib {r['calib_err']:.4f}  "
              f"rtn {r['rtn_held_out_err']:.4f}")
    if a.out:
        out = Path(a.out)
        write_json(out / "calib_study.json", res)
        write_outputs(res, out)
        print(f"wrote {out}/calib_study.json, calib_study.png and calib_study.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
