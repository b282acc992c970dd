"""Data: the prepared-frames layout, frame files, labels and masks, frame sources, the toy set, pseudo-anomalies,
and the preparation of official downloads (``preparation``)."""
