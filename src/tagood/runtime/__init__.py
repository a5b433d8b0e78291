"""Runtime: CPU threads, allocation, atomic files, logging, progress bars, torchrun."""
