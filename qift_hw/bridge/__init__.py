"""Bridge: the one place that joins the algorithm (PyTorch models) with the bit-accurate model, the RTL and the
GPU kernels: the simulated evaluation backend and real-model tiles for the RTL benches."""
