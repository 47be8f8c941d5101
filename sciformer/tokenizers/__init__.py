"""Tokenizers: protein sequences (ESM-2 alphabet) and continuous time series."""
