"""The Typer application that every command module registers on."""

import typer

app = typer.Typer(
    name="qift-hw",
    help="Qift 2-bit LLM inference: level sets, rotated W2A4/KV4 pipeline, bit-accurate model, RTL, GPU baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Qift 2-bit LLM inference: level sets, rotated W2A4/KV4 pipeline, bit-accurate model, RTL, GPU baselines."""
