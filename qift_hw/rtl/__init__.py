"""RTL of the Qift W2 x INT4 accelerator (Amaranth 0.5): PEs, PE arrays, Hadamard unit, and their verification.

Layering: this package may import ``qift_hw.sim`` (the bit-accurate model it is checked against), never the other
way round. Keep this file free of imports: the Verilator compile wrapper (``objcache``) runs as ``python -m`` once
per C++ file.
"""
