"""What evaluates a step: eager torch, ONNX Runtime, the GPU backends (``gpu``), the one registry, and
``compare`` (every backend on the same targets). Implements ``runtime.loop.backend.Backend``."""
