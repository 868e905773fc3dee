"""BM25 retrieval over the memory (pyserini), augmentation of the video corpus, retrieval quality."""
