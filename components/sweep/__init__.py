"""Hyper-parameter sweeps with Ray Tune (``python -m pipelines.sweep``): ``space.py`` turns a sweep
file into Tune's search space and the best trial into a params overlay; ``trial.py`` is one trial
(the train stage's Ray Train job, then the evaluate stage's scores); ``tuning.py`` runs, resumes
and records the whole sweep."""
