"""Local fakes of external services, shared by tests, benchmarks and chaos tests."""
