"""Benchmarks (`vimi bench ...`): each prints JSON figures with a baseline measured in the same run and
writes them to benchmarks/; the machine they ran on is part of every result (`common.machine`)."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "bench_memory": "vimi.bench.memory",
        "bench_retrieval": "vimi.bench.retrieval",
        "bench_pipeline": "vimi.bench.pipeline",
        "bench_lance_dvc": "vimi.bench.lance_dvc",
        "bench_train": "vimi.bench.train",
        "bench_sample": "vimi.bench.train",
        "bench_eval": "vimi.bench.evaluation",
    },
)
