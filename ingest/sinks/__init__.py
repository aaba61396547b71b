"""Where flushed Arrow tables go: Parquet files and DuckDB tables."""
