"""Readers and writers for the file contracts in DESIGN.md."""
