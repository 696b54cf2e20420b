"""Benchmark harness behind `ember bench`: a local corpus, peer runners, tables and charts."""
