"""rwku.reporting."""
