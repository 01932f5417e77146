"""The DuckDB result catalog (see issue: catalog, ranking, exports and reports)."""
