"""Throughput benchmark of job-tracker: load generator, reference consumers and the runner."""
