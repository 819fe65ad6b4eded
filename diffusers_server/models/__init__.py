"""Model files: A1111 folder scanning, hashing, single-file layouts and pipeline loading."""
