"""Video corpus (build, ingest, decoding) and the datasets over Lance that training reads."""
