"""Great Expectations suites, one module per dataset: memory, videos (training and evaluation clips),
retrieval (the quality gate over the augmented dataset), instructions; `common` holds what they share and
`suites.validate` finds a suite by name."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "validate": "vimi.validation.suites",
        "ValidationReport": "vimi.validation.common",
        "validate_memory": "vimi.validation.memory",
        "validate_videos": "vimi.validation.videos",
        "validate_retrieval": "vimi.validation.retrieval",
        "validate_instructions": "vimi.validation.instructions",
    },
)
