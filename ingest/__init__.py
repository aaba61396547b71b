"""Live blockchain and crypto market streams into DuckDB and Parquet, through Arrow batches."""

__version__ = "0.1.0"
