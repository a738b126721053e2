"""Tokenised data on disk, memory-mapped and streamed: sets larger than RAM (see store.py)."""
