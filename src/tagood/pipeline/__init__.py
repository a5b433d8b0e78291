"""Fit a detector on labelled image folders, save it, and score new images with it."""
