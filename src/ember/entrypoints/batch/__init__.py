"""Batch jobs: `ember embed` over files of any size, sharded and resumable."""
