"""Tollgate's background work: RQ job functions, the periodic schedule and the worker."""
