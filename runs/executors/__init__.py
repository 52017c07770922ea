"""Executors: one module per step kind, plus the process and outputs machinery they share."""
