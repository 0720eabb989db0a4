"""Which layers blow up: the drift of W2A4KV4 GPTQ models from their own float weights, by calibration size.

Takes the quantized points of a run spec (default `sim/specs/calib_curve.yaml`, filtered by --levels, --windows
and --seeds) whose per-layer GPTQ checkpoints are already under the spec's `run_root` (run the spec first: the
models are then rebuilt from those checkpoints, not quantized again), and measures each on the first
--eval-windows evaluation windows with `qift_hw.study.drift`: the relative distance of every decoder layer's
output from the same model's float-weight forward (same rotation, same A4/KV4), both perplexities, and the share of
each linear's weight-error output that is a constant offset per output channel. Writes drift.json, drift.md and
drift.png into --out.

    .venv/bin/python sw/calib_drift.py --out docs/results/calib_drift
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=str(ROOT / "sim" / "specs" / "calib_curve.yaml"))
    p.add_argument("--levels", default="std,mnz,pot_mnz")
    p.add_argument("--windows", default="8,32,128", help="calibration window counts to take from the spec")
    p.add_argument("--seeds", default="0", help="calibration seeds to take from the spec")
    p.add_argument("--eval-windows", type=int, default=2, help="evaluation windows (of the spec's length)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs") / "calib_drift")
    return p.parse_args(argv)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def select(points: list[dict], levels: list[str], windows: list[int], seeds: list[int]) -> list[dict]:
    out = [p for p in points if p["kind"] == "quant" and p["config"]["levels"] in levels
           and p["config"]["calib_windows"] in windows and p["config"]["calib_seed"] in seeds]
    if not out:
        raise SystemExit("no quantized point of the spec matches --levels, --windows and --seeds")
    return sorted(out, key=lambda p: (levels.index(p["config"]["levels"]), p["config"]["calib_windows"],
                                      p["config"]["calib_seed"]))


def measure(point: dict, windows) -> dict:
    import torch

    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.evaluate import ppl_from_nlls
    from qift_hw.study.calib_study import FORWARD_ORDER
    from qift_hw.study.drift import layer_drift, offset_share
    from qift_hw.study.experiments import point_model
    from qift_hw.study.points import cached_model

    base, tok = cached_model(point["model"])
    cfg = QuantConfig.from_dict(point["config"])
    t0 = time.perf_counter()
    model, qm = point_model("quant", cfg, base, tok, run_root=point["run_root"], model_id=point["model"],
                            progress=False)
    d = layer_drift(model, windows)
    share = offset_share(model, windows)
    by_kind = {k: [v for n, v in share.items() if n.endswith(k)] for k in FORWARD_ORDER}
    return {"levels": cfg.levels, "calib_windows": cfg.calib_windows, "calib_seqlen": cfg.calib_seqlen,
            "calib_seed": cfg.calib_seed,
            "resumed_layers": qm.resumed_layers, "seconds": time.perf_counter() - t0, **d,
            "ppl_quant": ppl_from_nlls(torch.tensor(d["nll_quant"], dtype=torch.float64), windows.shape[1]),
            "ppl_float": ppl_from_nlls(torch.tensor(d["nll_float"], dtype=torch.float64), windows.shape[1]),
            "offset_share": share,
            "offset_share_by_kind": {k: sum(v) / len(v) for k, v in by_kind.items() if v},
            "threads": torch.get_num_threads()}


def table(rows: list[dict], eval_shape: list[int]) -> str:
    from qift_hw.study.calib_study import FORWARD_ORDER

    n = len(rows[0]["drift"])
    picks = sorted({0, 1, 2, 3, n // 4, n // 2, 3 * n // 4, n - 2, n - 1})
    head = ("| set | calib windows | seed | ppl W2 (float-weight reference) | " + " | ".join(f"L{i}" for i in picks)
            + " | max (layer) |")
    lines = [f"On the first {eval_shape[0]} evaluation windows of {eval_shape[1]} tokens. Relative drift of each decoder "
             "layer's output from the same model's float-weight forward:", "", head,
             "|" + "---|" * (5 + len(picks))]
    for r in rows:
        d = r["drift"]
        i = max(range(n), key=d.__getitem__)
        lines.append(f"| {r['levels']} | {r['calib_windows']} | {r['calib_seed']} | {r['ppl_quant']:.1f} "
                     f"({r['ppl_float']:.2f}) | " + " | ".join(f"{d[j]:.3f}" for j in picks)
                     + f" | {d[i]:.3f} ({i}) |")
    lines += ["", "Share of each linear's weight-error output energy that is a per-channel constant (mean over "
              "the 30 layers):", "", "| set | calib windows | seed | " + " | ".join(FORWARD_ORDER) + " |",
              "|" + "---|" * (3 + len(FORWARD_ORDER))]
    for r in rows:
        s = r["offset_share_by_kind"]
        lines.append(f"| {r['levels']} | {r['calib_windows']} | {r['calib_seed']} | "
                     + " | ".join(f"{s[k]:.3f}" for k in FORWARD_ORDER) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qift_hw.core.io import atomic_path

    colours = {"std": "tab:red", "mnz": "tab:blue", "pot_mnz": "tab:green"}
    sizes = sorted({r["calib_windows"] for r in rows})
    styles = dict(zip(sizes, ("-", "--", ":", "-.", (0, (1, 3)))))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    from matplotlib.lines import Line2D

    for r in rows:
        kw = dict(color=colours.get(r["levels"]), ls=styles[r["calib_windows"]], lw=1.2, alpha=0.85)
        axes[0].plot(range(len(r["drift"])), r["drift"], **kw)
        share = [r["offset_share"][n] for n in r["offset_share"] if n.endswith("down_proj")]
        axes[1].plot(range(len(share)), share, **kw)
    axes[0].set(xlabel="decoder layer", ylabel="||h_q - h_f|| / ||h_f||", yscale="log",
                title="residual-stream drift from the float weights")
    axes[1].set(xlabel="decoder layer", ylabel="offset share of the error energy",
                title="down_proj: per-channel constant share of X(Wq-W)^T")
    handles = [Line2D([], [], color=c, lw=2, label=name) for name, c in colours.items()
               if any(r["levels"] == name for r in rows)]
    handles += [Line2D([], [], color="0.3", ls=styles[n], label=f"{n} x {rows[0]['calib_seqlen']} calibration")
                for n in sizes]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tqdm import tqdm

    from qift_hw.core.io import write_json, write_text
    from qift_hw.core.provenance import provenance
    from qift_hw.study.points import eval_windows
    from qift_hw.study.spec import expand, load_spec

    if a.threads:
        torch.set_num_threads(a.threads)
    points = select(expand(load_spec(a.spec)), a.levels.split(","), ints(a.windows), ints(a.seeds))
    ev = eval_windows(points[0]["model"], points[0]["text"], points[0]["eval_seqlen"], a.eval_windows)
    rows = []
    for p in tqdm(points, desc="points", unit="point"):
        rows.append(measure(p, ev))
        tqdm.write(f"{p['label']} {p['config']['calib_windows']} win seed {p['config']['calib_seed']}: "
                   f"ppl {rows[-1]['ppl_quant']:.1f}, max drift {max(rows[-1]['drift']):.3f}, "
                   f"{rows[-1]['resumed_layers']} layers resumed")
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "drift.json", {"provenance": provenance(), "settings": {k: str(v) for k, v in vars(a).items()},
                                      "eval_windows": list(ev.shape), "rows": rows})
    write_text(a.out / "drift.md", table(rows, list(ev.shape)))
    plot(rows, a.out / "drift.png")
    print(table(rows, list(ev.shape)))
    print(f"wrote {a.out}/drift.json, drift.md, drift.png")
    return 0


if __name__ == "__main__":
    from qift_hw.core.errors import QiftError

    try:
        sys.exit(main())
    except QiftError as exc:
        sys.exit(f"error: {exc}")
