"""Reading and writing media, below every other layer: video containers and the raw frame format."""
