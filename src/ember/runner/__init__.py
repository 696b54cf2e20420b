"""Model runner and worker lifecycle. No queues, no asyncio."""
