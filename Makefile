.PHONY: bench bench-quick

# Benchmarks (issue 6): every figure of BENCHMARKS.md and bench/latency.png in one run.
bench:
	bench/run.sh

bench-quick:
	bench/run.sh --quick
