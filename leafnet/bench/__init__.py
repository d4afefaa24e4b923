"""Benchmark cores: data loading vs training compute, onnxruntime, HTTP load."""
