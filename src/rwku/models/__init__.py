"""rwku.models."""
