"""The asyncio shell: sockets, files, processes and the clock, around the pure core."""
