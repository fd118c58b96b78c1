"""What several test files use: real nodes and clusters (nodes), the shells and the git a test
drives (tools). Test files import from here; conftest.py holds only the fixtures."""
