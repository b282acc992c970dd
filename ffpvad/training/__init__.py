"""Training: the loop (``engine``), measured precision and layout (``autotune``), torchrun (``distributed``),
TensorBoard logs (``tensorboard_log``), the run's log folder and curves, torch-free (``runlog``)."""
