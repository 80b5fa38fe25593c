"""Analysis: statistics, drift metrics and folding math (pure functions, no I/O)."""
