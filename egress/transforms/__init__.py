"""Stream transforms: each wraps an iterator of byte chunks and returns one (decrypt, compress)."""
