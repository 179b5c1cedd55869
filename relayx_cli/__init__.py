"""The `relayx` command line: runs the services, places calls, benchmarks."""
