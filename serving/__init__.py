"""The asyncio HTTP recommendation server: reads Redis, the model bundle and `item-vectors`."""
