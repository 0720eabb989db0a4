"""Vector ports: one ``data.ArrayLayout`` per vector, so lanes are indexed (``port[i]``), never sliced by hand.

A port of n lanes of ``bits`` each is one flat Verilog port of n * bits bits, lane ``i`` at bits
``[i*bits, (i+1)*bits)`` (what ``qift_hw.verify.lanes`` packs); a scalar port is one lane. ``port_lanes`` reads the
lane layout of every data port off a component's signature, so the benches and the Verilog share one description.
"""

from __future__ import annotations

from amaranth import Shape
from amaranth.lib import data

CONTROL_PORTS = ("en",)
"""Ports driven apart from the data ports (the global advance)."""


def vector(shape, n: int) -> data.ArrayLayout:
    """The layout of a vector port: ``n`` lanes of ``shape``."""
    return data.ArrayLayout(shape, n)


def shape_lanes(shape) -> tuple[int, int, bool]:
    """(lanes, bits per lane, signed) of a port shape: an ``ArrayLayout`` or a plain shape (one lane)."""
    if isinstance(shape, data.ArrayLayout):
        elem = Shape.cast(shape.elem_shape)
        return shape.length, elem.width, elem.signed
    s = Shape.cast(shape)
    return 1, s.width, s.signed


def port_lanes(component) -> dict[str, tuple[int, int, bool]]:
    """Layout of every data port of ``component`` in signature order: name -> (lanes, bits per lane, signed)."""
    return {name: shape_lanes(member.shape) for name, member in component.signature.members.items()
            if name not in CONTROL_PORTS}
