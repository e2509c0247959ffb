"""Portal pages: alerts."""
