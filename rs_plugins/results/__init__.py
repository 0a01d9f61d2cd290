"""Results: the resumable TSV and its sidecar, reports, comparisons across runs, provenance."""
