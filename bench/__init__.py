"""Speed benchmarks and the cross-CPU check, run from the repository root as modules:
``python -m bench.bench_numerics``, ``python -m bench.cross_cpu`` (`make bench`, `make cross-cpu`)."""
