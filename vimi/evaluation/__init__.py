"""Evaluation: FVD (I3D), Inception Score, SpriteWorld grounding metrics, the UCF101 protocol."""
