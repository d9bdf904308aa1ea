"""rwku.evaluation.suites."""
