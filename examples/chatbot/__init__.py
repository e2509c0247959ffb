"""An example operator product behind Tollgate's gateway: a tiny deterministic AI chatbot (see app.py)."""
