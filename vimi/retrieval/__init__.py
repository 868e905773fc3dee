"""BM25 retrieval over the memory (pyserini), augmentation of the video corpus, retrieval quality."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "BM25Searcher": "vimi.retrieval.bm25",
        "Hit": "vimi.retrieval.bm25",
        "build_index": "vimi.retrieval.bm25",
        "open_searcher": "vimi.retrieval.bm25",
        "examples": "vimi.retrieval.augment",
    },
)
