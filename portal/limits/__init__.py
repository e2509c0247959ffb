"""Flask-Limiter under Tollgate: the storage that answers from the admission decision, and its limit manager."""
