"""Portal pages: billing."""
