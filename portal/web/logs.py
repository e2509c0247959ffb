"""Portal pages: logs."""
