"""Portal pages: explorer."""
