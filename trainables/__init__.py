"""Ray Tune trainables: thin wrappers that run tune_hand's training loop as a trial."""
