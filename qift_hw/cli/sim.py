"""`qift-hw sim ...`: the bit-accurate model from the command line (protocol traces, a GEMM check)."""

from pathlib import Path
from typing import Optional

import typer

from qift_hw.cli.app import app
from qift_hw.cli.options import (ARRAY_HELP, LEVELS_HELP, acc_bits_option, acc_bits_or_default, check_at_least,
                                 check_out_folder, out_option, parse_array, run_folder, stimulus_seed_option)

sim_app = typer.Typer(help="Bit-accurate model of the W2 x INT4 array: protocol traces and checks.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")


@sim_app.command("trace")
def trace_cmd(
    dataflow: str = typer.Option("ws", "--dataflow", help="ws (weight-stationary) or os (output-stationary)."),
    array: str = typer.Option("4x4", "--array", help=ARRAY_HELP),
    m: int = typer.Option(5, "--m", help="WS: activation rows streamed through the pass."),
    k: int = typer.Option(6, "--k", help="OS: reduction length streamed through the pass."),
    level_set: str = typer.Option("pot_mnz", "--levels", help=LEVELS_HELP),
    acc_bits: Optional[int] = acc_bits_option,
    seed: int = stimulus_seed_option,
    out: Optional[Path] = out_option("trace.npz (one array per port, first axis = cycle) and trace.json"),
) -> None:
    """Run one random pass of the cycle-stepped array and save every port, cycle by cycle (docs/array_protocol.md)."""
    import numpy as np

    from qift_hw.core.errors import QiftError
    from qift_hw.core.io import atomic_path, write_json
    from qift_hw.core.provenance import provenance
    from qift_hw.sim.array import OSArray, WSArray, os_pass, ws_pass
    from qift_hw.sim.pe import pe_kind

    R, C = parse_array(array)
    acc_bits = acc_bits_or_default(acc_bits)
    _, code_bits = pe_kind(level_set)
    check_at_least("--m", m, 1)
    check_at_least("--k", k, 1)
    folder = run_folder(out, "sim_trace", dataflow=dataflow, array=f"{R}x{C}", m=m if dataflow == "ws" else None,
                        k=k if dataflow == "os" else None, levels=level_set, acc_bits=acc_bits, seed=seed)
    check_out_folder(folder, ("trace.npz", "trace.json"))
    rng = np.random.default_rng(seed)
    if dataflow == "ws":
        acts, codes = rng.integers(-8, 8, (m, R)), rng.integers(0, 2**code_bits, (C, R))
        res, ovf, tr = ws_pass(WSArray(R, C, level_set, acc_bits), acts, codes)
    elif dataflow == "os":
        acts, codes = rng.integers(-8, 8, (R, k)), rng.integers(0, 2**code_bits, (C, k))
        res, ovf, tr = os_pass(OSArray(R, C, level_set, acc_bits), acts, codes)
    else:
        raise QiftError(f"unknown dataflow {dataflow!r}; use ws or os")
    path = folder / "trace.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, acts=acts, codes=codes, results=res, overflow=ovf, **tr)
    write_json(folder / "trace.json", {"dataflow": dataflow, "array": f"{R}x{C}", "levels": level_set,
                                       "acc_bits": acc_bits, "seed": seed, "cycles": len(tr["en"]),
                                       "ports": sorted(tr), "provenance": provenance()})
    typer.echo(f"{dataflow.upper()} pass on {R}x{C}: {len(tr['en'])} cycles, results {res.shape}; wrote {path}")
