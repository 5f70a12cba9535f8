"""The application's services, shared by the HTTP server, the CLI and the in-process jobs: the inference
thread and the model version it serves, the result cache, counters, and request ids in logs."""
