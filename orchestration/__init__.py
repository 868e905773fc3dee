"""Dagster driver over the vimi library: assets, checks and resources (one Definitions)."""
