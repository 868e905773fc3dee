"""Great Expectations suites: memory, videos (and retrieval quality, later)."""
