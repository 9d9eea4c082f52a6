"""``python -m bench.gpu STEP``: the GPU benchmark, one short idempotent step per device call.

The GPU machine lent to this project reaches no package registry and lacks onnxruntime-gpu and
the server's web stack; one call carries at most 64 MiB (the tracked tree included). So the wheels
travel in pieces (``pieces`` here, ``send N`` and ``assemble`` there), and the Swin-T/ADE bundles
are exported there (``export``: the FP32 graph is 170 MB). Then ``model``, ``answers`` and
``service`` measure, each writing JSON to ``$OUT`` and printing the table so far. ``PLAN.md`` beside
this file is the sequence of device calls and their time budget. ``--rehearse`` runs every step
on this CPU with a tiny model (the CPU provider in place of CUDA), so that device minutes are
spent only on what needs the GPU.
"""
