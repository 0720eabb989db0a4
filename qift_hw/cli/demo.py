"""`qift-hw demo`: the main job on the embedded default, one stage per layer of the stack.

Each stage is one `qift-hw` command run in a child process, so the demo shows exactly what a user would type,
and one failing stage is reported without hiding the others.
"""

import shlex
import subprocess
import sys
import time
from pathlib import Path

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import RUNS, SEQLEN_HELP


DEMO_MIXED = "last:15"
"""The demo's mixed-precision point: W2 on the last 15 layers (close to what the sensitivity pass picks on this
model, layers 12-27, without the pass's 30 extra layer quantizations)."""


def _stages(out: Path, windows: int, seqlen: int, calib: int, quick: bool) -> list[tuple[str, list[str]]]:
    eval_args = ["eval", "--table", "demo", "--mixed", DEMO_MIXED, "--windows", str(windows), "--seqlen", str(seqlen),
                 "--calib-windows", str(calib), "--out", str(out / "pipeline"), "--run-root", str(out / "gptq")]
    return [
        ("1. Level sets (algorithm)", ["levels", "--out", str(out)]),
        ("2. Rotated W2A4/KV4 pipeline on SmolLM2-135M: FP, rotated FP, std/mnz/pot_mnz GPTQ, mixed point "
         f"(mnz on {DEMO_MIXED}, int4 elsewhere)", eval_args),
        *[(f"3. Accelerator estimate, edge preset (32x32 PEs, 16 GB/s): {name}, W2 vs W4 vs W8, prefill + decode",
           ["estimate", "--arch", "edge", "--model", model, "--phase", "both", "--out", str(out / f"estimate_{model}")])
          for model, name in (("smollm2", "SmolLM2-135M"), ("llama2-7b", "LLaMA-2-7B"))],
        ("4. RTL: generate Verilog", ["rtl", "generate"]),
        ("5. RTL: short cocotb verification on Icarus against the bit-accurate model",
         ["rtl", "verify", "--sim", "icarus", "--quick", "--out", str(out)]),
        ("6. RTL: Yosys area of the PE variants and a small array",
         ["rtl", "area", "--array", "2x2" if quick else "2x2,4x4", "--array-levels", "pot_mnz,int4",
          "--pe-acc-bits", "32", "--out", str(out / "area")]),
    ]


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(RUNS / "demo", "--out", help="Run folder for the demo's reports, tables and plots."),
    windows: int = typer.Option(16, "--windows", help="Evaluation windows for the perplexity stage."),
    seqlen: int = typer.Option(512, "--seqlen", help=f"{SEQLEN_HELP} Evaluation window length."),
    calib: int = typer.Option(16, "--calib-windows", help="GPTQ calibration windows (512 tokens each)."),
    quick: bool = typer.Option(False, "--quick", help="Smaller area sweep."),
    only: str = typer.Option("", "--only", help="Comma-separated stage numbers to run (default: all)."),
) -> None:
    """Run the whole stack on the embedded SmolLM2-135M: level sets, W2A4KV4 perplexity, estimate, RTL, area."""
    from rich.console import Console

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    wanted = {s.strip() for s in only.split(",") if s.strip()}
    results = []
    for title, args in _stages(out, windows, seqlen, calib, quick):
        if wanted and title.split(".")[0] not in wanted:
            continue
        console.rule(title)
        console.print(f"$ qift-hw {shlex.join(args)}", style="dim")
        t0 = time.time()
        rc = subprocess.call([sys.executable, "-m", "qift_hw", *args])
        results.append((title, rc, time.time() - t0))
    console.rule("7. GPU baselines")
    console.print("Measured on an H100 (see docs/gpu.md and docs/results/gpu_*.json); rerun on a GPU machine with "
                  "`python sw/gpu_bench.py` and `python sw/gpu_e2e.py`.")
    console.rule("Summary")
    for title, rc, dt in results:
        console.print(f"{'ok  ' if rc == 0 else 'FAIL'} {dt:7.1f} s  {title}")
    console.print(f"Reports under {out}/")
    if any(rc for _, rc, _ in results):
        raise typer.Exit(1)
