"""Feature extractors and taggers, one module per family (efficientnet, ram, clip)."""
