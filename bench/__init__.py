"""Benchmarks with their recorded results (not part of the test run). See bench/README.md."""
