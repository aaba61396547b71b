"""Benchmarks of the ingest daemon against what users would write instead (see README.md here)."""
