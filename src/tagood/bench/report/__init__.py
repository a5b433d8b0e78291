"""Writers of a benchmark run's outputs: results files, figures, overlays, the HTML page."""
