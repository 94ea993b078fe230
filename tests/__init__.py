"""The core's tests, laid out like the package they test (see tests/test_layout_of_tests.py)."""
