"""Detection in any video: the streaming predictor and the marked H.264 video."""
