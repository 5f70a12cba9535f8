"""The jobs interface: where the server hands work to the background, and the in-process runner.

With `REDIS_URL`, work becomes RQ jobs that `python -m worker` runs (job functions named by their
dotted path, as RQ does); without it, the same pipeline runs in a thread of the server, and
retraining in a child process. This package knows no HTTP."""
