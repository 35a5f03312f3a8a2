"""tune-hand: hyperparameter search for 3D hand pose estimation (EfficientNet + 1D heatmaps)."""

__version__ = "0.1.0"
