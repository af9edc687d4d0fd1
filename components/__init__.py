"""The library behind the pipeline: configuration, data, models, training, metrics, tracking.

Importing ``components`` (or any model/training module) never imports Ray or MLflow.
"""
