"""Login and step-up flows: first factor, challenge (send a code), verification."""
