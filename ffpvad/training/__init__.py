"""Training: the loop (``engine``), measured precision and layout (``autotune``), torchrun (``distributed``),
TensorBoard logs (``tensorboard_log``)."""
