"""Datasets: the MVTec LOCO AD layout (reader) and a synthetic LOCO-like generator."""
