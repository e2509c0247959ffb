"""Notifications: channels (e-mail, Slack, signed webhooks, in-portal) and the delivery outbox."""
