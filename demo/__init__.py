"""Demo dataset tooling: procedural scenes, evaluation metrics, and a small MaskFormer trained on them.

Tooling, not runtime: ``demo.scenes`` and ``demo.metrics`` need only NumPy and Pillow;
``demo.train`` and ``demo.evaluate_torch`` need the ``export`` extra (torch, transformers).
"""
