"""rwku.methods."""
