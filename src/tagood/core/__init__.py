"""Core types shared by every layer: model outputs, token sets, FeatureSet, Context, numeric helpers."""
