"""Great Expectations suites: memory, videos (and retrieval quality, later)."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "validate": "vimi.validation.suites",
        "ValidationReport": "vimi.validation.suites",
        "validate_retrieval": "vimi.validation.suites",
    },
)
