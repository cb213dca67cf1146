"""The GPU runtime: backends that replay one whole inversion iteration as a CUDA graph, and TensorRT engines.

Modules (each imports torch, TensorRT and cuda-python lazily or not at all where it can, so the package
imports and its pure parts are tested on a CPU-only machine):

- ``slots``: the static per-bucket slot buffers and the bucket arithmetic;
- ``profiles``, ``engine_io``: TensorRT optimisation profiles, engine I/O naming and shapes (pure);
- ``numerics``: IEEE fp32 or TF32 for torch's cuDNN/cuBLAS while kernels are chosen;
- ``ops``: the loss and Adam halves of an iteration (CUDA kernels or torch ops);
- ``graphed``: the base class that stages, captures, replays and publishes (one skeleton);
- ``torch_graph``: ``CudaGraphTorchBackend``; ``tensorrt``: ``TensorRTBackend``;
- ``trt_env`` (TensorRT present? which precisions?), ``graphs`` (which ONNX file is which),
  ``engine_cache`` (keys, sidecars, verified lookup), ``trt_build`` (ONNX → engine), ``trt_load`` (engine →
  runtime objects).
"""
