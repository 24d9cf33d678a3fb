"""matching layer."""
