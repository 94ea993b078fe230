"""Sweep: a suite's grid planned into unique stages, run by the local or Ray executor, cell by cell."""
