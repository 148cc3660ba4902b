"""bwfast's load harness: `python -m perf run|compare|ceiling|report` (see BENCHMARKS.md)."""
