"""Portal pages: costs."""
