"""Yosys area: cell counting on designs whose size is known by hand, the PE ordering the paper rests on, and the
scripts `rtl generate` writes beside the Verilog giving the same counts as `qift-hw rtl area`."""

import re
import subprocess

from qift_hw.rtl.area import synthesise
from qift_hw.rtl.generate import pe_top, verilog_text, write_top


GATES = """
module gates(input clk, input [3:0] a, input [3:0] b, output [3:0] y, output reg [3:0] r);
  assign y = a & b;
  always @(posedge clk) r <= a ^ b;
endmodule
"""


def test_cell_counts_of_a_design_counted_by_hand(yosys):
    """Four 2-input ANDs, four XORs and four flip-flops: 12 generic cells, 4 of them FFs; on iCE40 the four
    bits of XOR feeding FFs are four LUT4s plus 4 SB_DFF, the ANDs four more LUT4s."""
    res = synthesise(GATES, "gates", {}, yosys)
    assert res.generic_cells == 12 and res.generic_ff == 4
    assert res.generic_by_type.get("$_AND_") == 4 and res.generic_by_type.get("$_XOR_") == 4
    assert res.ice40_ff == 4 and res.ice40_lut4 == 8


def test_shift_add_pe_is_smaller_than_multiplier_pes(yosys):
    cells = {k: synthesise(verilog_text(pe_top(k, 16)), pe_top(k, 16).name, {}, yosys)
             for k in ("pot_mnz", "int4", "int8")}
    assert cells["pot_mnz"].generic_logic < cells["int4"].generic_logic < cells["int8"].generic_logic
    assert cells["pot_mnz"].ice40_lut4 < cells["int8"].ice40_lut4
    # every PE keeps a 16-bit accumulator register (plus a few control bits): the FF count sees the width
    assert all(16 <= c.generic_ff <= 24 for c in cells.values())


def test_generated_yosys_script_reproduces_area(yosys, tmp_path):
    from qift_hw.rtl.area import FLOWS, yosys_script

    top = pe_top("mnz", 24)
    path = write_top(top, tmp_path)
    script = tmp_path / f"{top.name}.generic.ys"
    script.write_text(yosys_script(path.name, top.name, "generic"))
    out = subprocess.run(yosys + ["-s", script.name], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-500:]
    counts = [int(n) for n in re.findall(r"Number of cells:\s+(\d+)", out.stdout)]
    assert counts and counts[-1] == synthesise(verilog_text(top), top.name, {}, yosys).generic_cells
    assert set(FLOWS) == {"generic", "ice40"}
