"""Train: the loop every loss plugin shares, the losses' building blocks, checkpoints and the smoothed PGD."""
