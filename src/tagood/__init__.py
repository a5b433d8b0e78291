"""tagood: out-of-distribution detection with tagging and vision-language models.

Score convention everywhere: a detector returns an OOD score, **higher = more OOD**.
"""

__version__ = "0.1.0"
