"""Costs of outside services: prices, reported events, service limits and budgets."""
