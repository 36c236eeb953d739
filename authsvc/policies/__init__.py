"""Who may do what, and when a code is needed."""
