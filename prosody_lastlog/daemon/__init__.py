"""Keeping counts fresh: the live state, the one refresh, the file watcher, the timers, start, stop and reload."""
