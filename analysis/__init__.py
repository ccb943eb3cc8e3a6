"""Reports over run records: `harness-report`. Reads records only; never trains."""
