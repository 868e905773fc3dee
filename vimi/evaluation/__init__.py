"""Evaluation: the FVD feature network (I3D, Kinetics-400) and the metrics built on it."""
