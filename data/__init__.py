"""Vocabulary, the procedural world and the input pipeline (issues 3 and 4)."""
