"""pandera (polars) models of the datasets' records."""
