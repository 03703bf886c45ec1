"""The sans-I/O core: pure state machines fed events and the clock, returning effects.

Nothing under this package touches a socket, a file, the real clock or the global random
source; `tests/unit/test_layering.py` scans the imports to keep it that way.
"""
