"""Readers and writers for the file contracts in docs/formats.md."""
