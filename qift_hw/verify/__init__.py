"""Verification of the RTL: simulator plumbing (cocotb runner, Icarus, Verilator), stimulus from the
bit-accurate model, port replay, the verification cases and lint. Imports core, sim and rtl.

Keep this file free of imports: the Verilator compile wrapper (``objcache``) runs as ``python -m`` once per C++
file.
"""
