"""The plain-PyTorch training loop (no Ray, no MLflow) and checkpoints."""
