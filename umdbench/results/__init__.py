"""Results: the store of rows, their intervals and tests, leaderboards beside the paper's numbers,
reference points, the power planner and provenance."""
