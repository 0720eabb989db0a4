"""RTL generators of the Qift W2 x INT4 accelerator (Amaranth 0.5): PEs, PE arrays, Hadamard unit, Verilog
output and Yosys area. Imports core and sim (the bit-accurate model it is checked against), never above."""
