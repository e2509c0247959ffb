"""Tenants, their users, API keys, the audit trail and change notices."""
