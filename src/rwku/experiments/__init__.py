"""rwku.experiments."""
