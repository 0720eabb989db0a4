"""Algorithm (PyTorch): models, text, QuaRot rotation, the quantized forward, GPTQ/RTN, mixed W2/W4 layers, the
quantization driver, checkpoints, perplexity and weight statistics. Imports core only."""
