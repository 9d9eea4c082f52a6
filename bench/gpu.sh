#!/usr/bin/env bash
# One command on a GPU machine (PyTorch present, no internet): export the Swin-T/ADE
# architecture, build and verify FP32 and FP16 TensorRT engines, and print a markdown table of
# PyTorch eager, ONNX Runtime CUDA EP, ONNX Runtime TensorRT EP and native TensorRT at batch
# 1/8/32. Needs the `gpu` extra (onnxruntime-gpu, tensorrt, cuda-python) for everything but
# the PyTorch row; what is missing is reported in the table.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m bench.gpu "$@"
