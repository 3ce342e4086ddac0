"""The stages train.py runs: the tokenizers now, the LM training loop with issue 5."""
