"""Run: one cell's stages trained (one process, torchrun or several nodes) and evaluated, through
mmengine; the work dir's one owner (Workspace) and the path from a planned cell to a stored row."""
