"""Run utilities: metric writing, progress lines, process stats, checkpoints."""
