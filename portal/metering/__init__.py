"""Metering: admitting protected calls, the usage stream, storing records and rollups, the local spool, retention."""
