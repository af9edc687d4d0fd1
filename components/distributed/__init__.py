"""Running the worker bodies on Ray Train (or in-process): sessions, jobs, the runner."""
