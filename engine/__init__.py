"""The training framework around gmconv: config schema, training loop, checkpoints, logging."""
