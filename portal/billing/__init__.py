"""Billing: plans, subscriptions and billing periods, and the use of a plan's limits."""
