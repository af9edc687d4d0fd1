"""Data: fetching raw sources into ``data/prepared/`` and loading it for training."""
