"""The native TensorRT 10 backend: engine building, the engine cache manifest, CUDA calls and
execution. Imported only when TensorRT is used; the CPU install never loads it."""
