"""One module per pipeline stage: read inputs from the artifact store, call lagcl, write artifacts."""
