"""Model compression: pruning (magnitude, OBD, OBS, FishLeg Surgeon) as optax wrappers."""
