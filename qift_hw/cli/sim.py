"""`qift-hw sim ...`: the bit-accurate model from the command line (protocol traces, a GEMM check)."""

from pathlib import Path

import typer

from qift_hw.cli.app import app

sim_app = typer.Typer(help="Bit-accurate model of the W2 x INT4 array: protocol traces and checks.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")


@sim_app.command("trace")
def trace_cmd(
    dataflow: str = typer.Option("ws", "--dataflow", help="ws (weight-stationary) or os (output-stationary)."),
    array: str = typer.Option("4x4", "--array", help="PE array size, rows x columns."),
    m: int = typer.Option(5, "--m", help="WS: activation rows streamed through the pass."),
    k: int = typer.Option(6, "--k", help="OS: reduction length streamed through the pass."),
    level_set: str = typer.Option("pot_mnz", "--levels", help="Level set of the PEs (pot_mnz, mnz, pm12, std, int4)."),
    acc_bits: int = typer.Option(32, "--acc-bits", help="Accumulator width."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random activations and codes."),
    out: Path = typer.Option(Path("trace.npz"), "--out", help="Output .npz: one array per port, first axis = cycle."),
) -> None:
    """Run one random pass of the cycle-stepped array and save every port, cycle by cycle (docs/array_protocol.md)."""
    import numpy as np

    from qift_hw.cli.estimate import _parse_array
    from qift_hw.core.errors import QiftError
    from qift_hw.core.io import atomic_path
    from qift_hw.sim.array import OSArray, WSArray, os_pass, ws_pass
    from qift_hw.sim.pe import pe_kind

    R, C = _parse_array(array)
    _, code_bits = pe_kind(level_set)
    rng = np.random.default_rng(seed)
    if dataflow == "ws":
        acts, codes = rng.integers(-8, 8, (m, R)), rng.integers(0, 2**code_bits, (C, R))
        res, ovf, tr = ws_pass(WSArray(R, C, level_set, acc_bits), acts, codes)
    elif dataflow == "os":
        acts, codes = rng.integers(-8, 8, (R, k)), rng.integers(0, 2**code_bits, (C, k))
        res, ovf, tr = os_pass(OSArray(R, C, level_set, acc_bits), acts, codes)
    else:
        raise QiftError(f"unknown dataflow {dataflow!r}; use ws or os")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, acts=acts, codes=codes, results=res, overflow=ovf, **tr)
    typer.echo(f"{dataflow.upper()} pass on {R}x{C}: {len(tr['en'])} cycles, results {res.shape}; wrote {out}")
