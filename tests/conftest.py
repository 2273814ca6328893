"""Fixtures shared by the test files: `tests.pipeline_fixtures` holds the session's one `r1_tiny --quick` run."""

pytest_plugins = ["tests.pipeline_fixtures"]
