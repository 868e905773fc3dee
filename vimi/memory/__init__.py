"""The image-text memory: schema, build (SpriteWorld or configured sources), ingest adapters."""
