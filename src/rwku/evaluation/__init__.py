"""rwku.evaluation."""
