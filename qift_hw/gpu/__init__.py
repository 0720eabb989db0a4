"""GPU path: packed W2 weights, a Triton W2 matmul (PyTorch fallback on the CPU), and decode benchmarks."""
