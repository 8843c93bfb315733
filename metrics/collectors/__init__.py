"""Collectors, one module per source. Nothing here runs at import."""
