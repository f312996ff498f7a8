import pytest

# Helpers whose asserts should explain a failure as a test's own asserts do.
pytest.register_assert_rewrite("tests.support.channels")
