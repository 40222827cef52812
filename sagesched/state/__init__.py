"""Shared state between replicas: pod snapshots and completion history, in Redis or in-process."""
