"""The ground floor every capability stands on: the audit trail and change notices, the clock,
billing periods and day bounds, the one time format, Redis key names, the CSV writer and the
mail transport. Nothing here imports a capability, a blueprint or the worker."""
