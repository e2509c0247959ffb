"""Portal pages: notifications."""
