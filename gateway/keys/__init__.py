"""API keys: value format and checksum, keyed hashing, records, stores and the lookup cache."""
