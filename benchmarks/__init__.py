"""Side-by-side benchmarks; `python -m benchmarks run --suite cpu|gpu` writes BENCHMARKS.md."""
