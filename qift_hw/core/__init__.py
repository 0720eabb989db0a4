"""Core: what every layer shares and nothing above it may change: errors, atomic I/O, level sets, the bit
formats, the Hadamard transform and the model-shape registry. Imports nothing else of qift_hw."""
