"""Alerts: rules per tenant, their evaluation by the worker, and what users do with alerts."""
