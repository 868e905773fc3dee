"""Training: one loop (accelerate + MLflow) shared by the image-encoder alignment, stage 1 and stage 2."""
