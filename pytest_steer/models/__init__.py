"""Which model a case runs on: specs, the packaged real models, fingerprints from files, loading."""
