"""Orchestration of each command: audit, drift, fold, recalibrate."""
