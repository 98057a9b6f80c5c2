"""Gradient descent, the same for every engine: the loop (`loop`: pieces, divergence, kept
trajectories), the update rules and their hyperparameters (`optimizers`), each point's summary
(`outcomes`) and what theory says of it (`theory`). Nothing here knows of Hydra or MLflow."""
